"""What every unit of a launch needs, built once by the driver and shipped as-is.

Why a frozen dataclass: the driver builds it once (`tune.build_context`, then
`tune.prepare_stores` adds the MLflow run ids), Ray ships it to every worker through
the object store, and `worker.run_unit` reads it without validating anything again:
the study inside was validated (and its data pinned) by the launch. Frozen, so no
worker can change what another one sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from .spec import Study


@dataclass(frozen=True)
class RunContext:
    study: "Study"            # validated, data pinned (`Study.with_data_pinned`)
    source: str               # the spec file, for messages and study.json
    study_dir: Path
    base_dir: Path            # where the spec's relative paths (a Parquet target) start
    spec_hash: str
    code_version: str
    tracking_uri: str
    optuna_storage: str
    device: str               # `plan.study_device`: cpu, cuda, …
    threads: int              # torch threads per unit
    data: dict | None = None  # `targets.check_study_data`'s summary (scale, sha256, rows)
    study_run: str = ""       # MLflow run ids, known once `tune.prepare_stores` ran
    cell_runs: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.study.name

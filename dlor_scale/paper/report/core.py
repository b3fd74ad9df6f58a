"""The vocabulary of a report: paper constants, `Check` → `Verdict`, `Section`, metric names."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

#: The paper's quoted numbers (notes §2.6): deep DLoR reaches ~1e-4; threshold 1e-3.
PAPER_DEEP_ERROR = 1e-4


PAPER_THRESHOLD = 1e-3


#: Analytic L2 floor of any ridge function on x1·x2 over [-1,1]² (construct.ridge_floor).
X1X2_FLOOR_RMS = math.sqrt(4.0 / 135.0)

#: Which model family plays which role in the paper's comparisons.
ROLES = {"deep": "dlor_deep", "wide": "dlor_wide", "dense": "dense", "rank1": "rank1", "lowrank": "lowrank"}

COLORS = {"dlor_deep": "tab:blue", "dlor_wide": "tab:orange", "dense": "tab:gray", "rank1": "tab:red",
          "lowrank": "tab:green"}



@dataclass(frozen=True)
class Check:
    """One falsifiable inequality behind a verdict; ``passed=None`` = could not be evaluated."""

    name: str
    passed: bool | None
    detail: str = ""



@dataclass(frozen=True)
class Verdict:
    """``reproduced`` only if every check was evaluated and passed; ``partly`` if some did."""

    checks: tuple[Check, ...]

    @property
    def label(self) -> str:
        done = [c for c in self.checks if c.passed is not None]
        if not done:
            return "inconclusive"
        if all(c.passed for c in done) and len(done) == len(self.checks):
            return "reproduced"
        if any(c.passed for c in done):
            return "partly reproduced"
        return "not reproduced"

    def markdown(self) -> str:
        mark = {True: "✅", False: "❌", None: "–"}
        lines = [f"**Verdict: {self.label}**", ""]
        lines += [f"- {mark[c.passed]} {c.name}" + (f" — {c.detail}" if c.detail else "") for c in self.checks]
        return "\n".join(lines)



def verdict(checks: Iterable[Check]) -> Verdict:
    """Combine checks into a verdict (see `Verdict.label` for the rule)."""
    return Verdict(tuple(checks))



@dataclass
class Section:
    """One claim's part of a report: Markdown body, figures, numbers for MLflow, verdict."""

    key: str
    title: str
    body: str
    figures: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    verdict: Verdict | None = None

    def markdown(self, base: Path) -> str:
        parts = [f"## {self.title}", ""]
        if self.verdict is not None:
            parts += [self.verdict.markdown(), ""]
        parts += [self.body, ""]
        for fig in self.figures:
            rel = Path(fig).resolve().relative_to(Path(base).resolve()) if _is_under(fig, base) else fig
            parts += [f"![{Path(fig).stem}]({rel.as_posix()})", ""]
        return "\n".join(parts)



def _is_under(path: Path, base: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(base).resolve())
        return True
    except ValueError:
        return False



def _metric_key(*parts) -> str:
    """MLflow metric names allow letters, digits, ``_-./`` and spaces only."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", ".".join(str(p) for p in parts))


"""One owner per name (issue 15): the study folder's file names are spelled only in
`studydir`, the MLflow tag keys only in `run_schema`, and the modules that write or read
MLflow runs take metric keys from `run_schema` too. Read from the source (string literals,
docstrings left out), so a name spelled anew anywhere fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dlor_scale
from dlor_scale import run_schema, studydir

PACKAGE = Path(dlor_scale.__file__).parent

#: Words that are also other things (a spec's ``kind`` field, the ledger's ``state``, the
#: keys of study.json): not checked as tag keys.
GENERIC = {run_schema.Tag.KIND, run_schema.Tag.STATE, run_schema.Tag.SPEC_HASH, run_schema.Tag.CODE_VERSION}
#: Modules that write or read MLflow runs (the Arrow table's same-named columns, read by
#: `scaling` and `units`, are `records`' export schema, not MLflow keys).
MLFLOW_MODULES = ("tracking.py", "records.py", "analysis.py", "tune.py", "paper/report/mlflow_io.py")


def _literals(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path


def test_study_folder_names_are_spelled_only_in_studydir():
    names = (studydir.STUDY_MARKER, studydir.MLFLOW_DB, studydir.OPTUNA_JOURNAL, "confirm.complete", ".done.json",
             ".jsonl")
    folders = ("units", "ledger", "checkpoints", "outbox", "heartbeats", studydir.TUNE, studydir.ARTIFACTS)
    joined = re.compile(r"/\s*[\"'](%s)[\"']" % "|".join(folders))   # study_dir / "outbox"
    bad = []
    for rel, path in _modules():
        if rel == "studydir.py":
            continue
        bad += [(rel, s) for s in _literals(path) if any(n in s for n in names)]
        bad += [(rel, m.group(1)) for m in joined.finditer(path.read_text())]
    assert not bad, f"study-folder names spelled outside studydir.py: {bad}"


def test_mlflow_tag_keys_are_spelled_only_in_run_schema():
    tags = {v for k, v in vars(run_schema.Tag).items() if not k.startswith("_")} - GENERIC
    bad = [(rel, s) for rel, path in _modules() if rel != "run_schema.py" for s in _literals(path) if s in tags]
    assert not bad, f"MLflow tag keys spelled outside run_schema.py: {bad}"


def test_mlflow_metric_keys_come_from_run_schema_where_runs_are_written_and_read():
    metrics = {v for k, v in vars(run_schema.Metric).items() if not k.startswith("_") and isinstance(v, str)}
    suffixes = {v for k, v in vars(run_schema.FitMetric).items() if not k.startswith("_") and len(v) > 1}
    bad = []
    for rel in MLFLOW_MODULES:
        for s in _literals(PACKAGE / rel):
            if s in metrics or s.lstrip(".") in suffixes and s.startswith("."):
                bad.append((rel, s))
    assert not bad, f"MLflow metric keys spelled outside run_schema.py: {bad}"

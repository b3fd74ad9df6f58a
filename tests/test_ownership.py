"""One owner per name (issue 15): the study folder's file names are spelled only in
`studydir`, the MLflow tag keys, metric keys (also the member table's column names) and
point flags only in `run_schema`. Read from the source (string literals,
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


def test_mlflow_metric_keys_and_point_flags_are_spelled_only_in_run_schema():
    """Metric keys are also the member table's column names (records exports them under
    the same names) and point flags are cell-run tag values: one spelling, in run_schema."""
    metrics = {v for k, v in vars(run_schema.Metric).items() if not k.startswith("_") and isinstance(v, str)}
    flags = set(run_schema.Flag.ALL)
    suffixes = {v for k, v in vars(run_schema.FitMetric).items() if not k.startswith("_") and len(v) > 1}
    bad = []
    for rel, path in _modules():
        if rel == "run_schema.py":
            continue
        for s in _literals(path):
            if s in metrics or s in flags or s.lstrip(".") in suffixes and s.startswith("."):
                bad.append((rel, s))
    assert not bad, f"MLflow metric keys or point flags spelled outside run_schema.py: {bad}"

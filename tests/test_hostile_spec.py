"""Hostile and malformed spec files through the real CLI (issue 14, "spec input hardening").

Why: a spec is user input read by a tool that creates folders and databases. Every case
here must end with exit 2, one line naming the field or the limit, no traceback, nothing
created, and (for bombs, FIFOs, huge files) quickly and in bounded memory — a validator
that hangs or eats 3 GB is a denial of service on the login node it runs on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Small and cheap to solve (the base of test_spec.py).
BASE = {
    "name": "t",
    "target": {"kind": "teacher", "d_in": 2, "widths": [4], "n_train": 64, "n_val": 16, "n_test": 16},
    "budgets": [200, 100],
    "tolerance": 0.05,
    "families": {"dense": {"width": {"min": 2, "max": 16}, "depth": [1, 2, 3]}},
    "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    "trials_per_cell": 4,
    "epochs": 20,
    "report_every": 5,
    "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
}

_RUNNER = """
import sys, time
# Import the heavy modules first (torch: seconds on a loaded machine), so the time
# measured is the spec's own cost: reading, parsing, validating, planning. CPU seconds,
# not wall: on a shared box under load the wall clock measures the neighbours.
import dlor_scale.cli, dlor_scale.spec, dlor_scale.plan, dlor_scale.targets
from dlor_scale.cli import app
t0 = time.process_time()
try:
    app(sys.argv[1:], standalone_mode=True)
finally:
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking pytest's, which
    # Linux carries over fork + exec).
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(f"@@rss_kib={rss} t={time.process_time() - t0:.2f}", file=sys.stderr)
"""


def base_text(**changes) -> str:
    d = {**BASE, **changes}
    return yaml.safe_dump(d, sort_keys=False)


def run_cli(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process (its own memory and a hard timeout for hangs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DLOR_OUTPUT_DIR": str(cwd / "runs"),
           "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DLOR_OPTUNA_STORAGE", None)
    return subprocess.run([sys.executable, "-c", _RUNNER, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _stats(stderr: str) -> tuple[float, float]:
    """(peak RSS in MB, CPU seconds spent after imports) printed by the runner."""
    line = [x for x in stderr.splitlines() if x.startswith("@@rss_kib=")][-1]
    kib, t = line.removeprefix("@@rss_kib=").split(" t=")
    return int(kib) / 1024, float(t)


def assert_rejected(path: Path, cwd: Path, *fragments: str, bomb: bool = False):
    """validate and launch --dry-run both exit 2, name the field/limit, print no traceback
    and create nothing (no runs/ folder, no new file next to the spec)."""
    before = sorted(p.name for p in cwd.iterdir())
    for cmd in (["validate", str(path)], ["launch", "--dry-run", str(path)]):
        r = run_cli(cmd, cwd)
        text = r.stdout + r.stderr
        assert r.returncode == 2, (cmd, r.returncode, text[-2000:])
        assert "Traceback" not in text, text[-2000:]
        for f in fragments:
            assert f in text, (f, text[-2000:])
        if bomb:
            rss, secs = _stats(r.stderr)
            # The runner's own imports (typer, rich, pydantic) are counted: still far below.
            assert rss < 500, f"peak RSS {rss:.0f} MB"
            assert secs < 5, f"{secs:.1f} CPU s"
    assert sorted(p.name for p in cwd.iterdir()) == before
    assert not (cwd / "runs").exists()


# --------------------------------------------------------------------------- YAML bombs and shapes

_LAUGHS = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)])


def _bomb_as_unknown_key() -> str:
    return base_text() + _LAUGHS + "\n"


def _bomb_in_description() -> str:
    body = "\n".join("  " + line for line in _LAUGHS.splitlines())
    return base_text() + "description:\n" + body.replace("  a8:", "  a8:") + "\n"


def _bomb_as_budgets() -> str:
    return "x: &b0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "\n".join(
        f"x{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]" for i in range(1, 7)) + "\n" + \
        base_text().replace("budgets:\n- 200\n- 100\n", "budgets: *b6\n")


YAML_CASES = {
    "alias bomb as unknown keys": (_bomb_as_unknown_key, "MAX_YAML_NODES"),
    "alias bomb in description": (_bomb_in_description, "MAX_YAML_NODES"),
    "alias bomb as budgets": (_bomb_as_budgets, "MAX_YAML_NODES"),
    "self-referential list": (lambda: base_text() + "x: &r [*r]\n", "self-referential"),
    "self-referential mapping": (lambda: base_text() + "y: &f {dense: *f}\n", "self-referential"),
    "20,000-deep list": (lambda: base_text() + "z: " + "[" * 20_000 + "]" * 20_000 + "\n", "MAX_YAML_DEPTH"),
    "60-deep mapping": (lambda: base_text() + "z: " + "{a: " * 60 + "1" + "}" * 60 + "\n", "MAX_YAML_DEPTH"),
    "date key": (lambda: base_text() + "2024-01-01: 1\n", "timestamp key"),
    "binary key": (lambda: base_text() + "? !!binary aGVsbG8=\n: 1\n", "binary key"),
    "50 MB description": (lambda: base_text() + "description: " + "x" * 50_000_000 + "\n", "MAX_SPEC_BYTES"),
    "50 MB of comments": (lambda: base_text() + ("# " + "c" * 98 + "\n") * 500_000, "MAX_SPEC_BYTES"),
}


@pytest.mark.parametrize("case", list(YAML_CASES), ids=list(YAML_CASES))
def test_yaml_bombs_and_shapes_are_refused_fast(case, tmp_path):
    make, fragment = YAML_CASES[case]
    spec = tmp_path / "s.yaml"
    spec.write_text(make())
    assert_rejected(spec, tmp_path, fragment, bomb=True)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_spec_must_be_a_regular_file(kind, tmp_path):
    """A FIFO would block forever on open/read, /dev/zero would fill memory."""
    if kind == "fifo":
        path = tmp_path / "s.yaml"
        os.mkfifo(path)
    elif kind == "dev_zero":
        path = Path("/dev/zero")
    else:
        path = tmp_path / "dir.yaml"
        path.mkdir()
    t0 = time.monotonic()
    assert_rejected(path, tmp_path, "regular file", bomb=True)
    assert time.monotonic() - t0 < 60


def test_limits_are_generous_for_real_specs():
    """The shipped studies stay far inside the limits (they are a few KB)."""
    from dlor_scale.spec import MAX_SPEC_BYTES, load_study
    for f in (ROOT / "studies").glob("*.yaml"):
        assert f.stat().st_size < MAX_SPEC_BYTES / 20
        load_study(f)

# --------------------------------------------------------------------------- rich markup in user text

MARKUP_CASES = {
    "name": (lambda: base_text(name="x[/x]"), "x[/x]"),
    "name [b]": (lambda: base_text(name="[b]x"), "[b]x"),
    "family label": (lambda: base_text(families={"[/x]": {"family": "dense", "width": 4, "depth": 1}}), "[/x]"),
    "unknown key": (lambda: base_text() + "'[/x]': 1\n", "[/x]"),
    "unknown key [b]": (lambda: base_text() + "'[b]oops': 1\n", "[b]oops"),
}


@pytest.mark.parametrize("case", list(MARKUP_CASES), ids=list(MARKUP_CASES))
def test_markup_in_user_text_prints_literally(case, tmp_path):
    """rich would raise MarkupError on "[/x]" and silently eat "[b]"."""
    make, literal = MARKUP_CASES[case]
    folder = tmp_path / "["  # the spec path itself holds markup: ".../[/x].yaml"
    folder.mkdir()
    spec = folder / "x].yaml"
    spec.write_text(make())
    assert_rejected(spec, tmp_path, literal, "[/x].yaml")


def test_markup_in_a_valid_spec_path_prints_literally(tmp_path):
    folder = tmp_path / "[b]"
    folder.mkdir()
    spec = folder / "s.yaml"
    spec.write_text(base_text())
    for cmd in (["validate", str(spec)], ["launch", "--dry-run", str(spec)]):
        r = run_cli(cmd, tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
    assert str(spec) in run_cli(["validate", str(spec)], tmp_path).stdout.replace("\n", "")


# --------------------------------------------------------------------------- numbers, names, plan size

def _target(**kw) -> dict:
    return {**BASE["target"], **kw}


VALUE_CASES = {
    "n_train true": ({"target": _target(n_train=True)}, "n_train: must be a number, not a boolean"),
    "seed true": ({"target": _target(seed=True)}, "seed: must be a number, not a boolean"),
    "noise true": ({"target": _target(noise=True)}, "noise: must be a number, not a boolean"),
    "noise .inf": ({"target": _target(noise=float("inf"))}, "target.noise: Input should be a finite number"),
    "noise 'inf'": ({"target": _target(noise="inf")}, "target.noise: Input should be a finite number"),
    "noise nan": ({"target": _target(noise=float("nan"))}, "target.noise: Input should be a finite number"),
    "name trailing newline": ({"name": "t\n"}, "name: must be 1-64 letters"),
    "name NUL": ({"name": "t\x00x"}, "name: must be 1-64 letters"),
    "label trailing newline": ({"families": {"dense\n": {"family": "dense", "width": 4, "depth": 1}}},
                               "must be 1-64 letters"),
    "100,000 budgets": ({"budgets": list(range(1, 100_001))}, "limit MAX_YAML_NODES"),  # caught even earlier
    "1,500 budgets": ({"budgets": list(range(100, 1600))}, "budgets: List should have at most 64 items"),
    "depth 1e9": ({"families": {"dense": {"width": 4, "depth": 10**9}}}, "families.dense.depth: values must be ≤ 10,000"),
    "depth 1e12": ({"families": {"dense": {"width": 4, "depth": 10**12}}}, "limit AXIS_MAX"),
    "width 1e9 range": ({"families": {"dense": {"width": {"min": 1, "max": 10**9}, "depth": 1}}},
                        "families.dense.width: values must be ≤ 1,000,000"),
    "30 families x 99,999 shapes": (
        {"families": {f"f{i}": {"family": "dense", "width": {"min": 1, "max": 99_999}, "depth": 1} for i in range(30)}},
        "MAX_TOTAL_GRID"),
}


@pytest.mark.parametrize("case", list(VALUE_CASES), ids=list(VALUE_CASES))
def test_numbers_names_and_plan_size_are_strict(case, tmp_path):
    """Booleans/inf/NaN are not numbers, names are a safe charset (no newline, no NUL),
    and the plan's size is bounded before anything is enumerated."""
    changes, fragment = VALUE_CASES[case]
    spec = tmp_path / "s.yaml"
    spec.write_text(base_text(**changes))
    assert_rejected(spec, tmp_path, fragment, bomb=True)

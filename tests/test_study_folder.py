"""Where a study lands (issue 14): a study folder is only ever created fresh or reused
when it holds this study's own study.json; system folders and stores of another kind
are refused by `validate`, `launch --dry-run` and `launch` alike.

Why: the tool runs as whoever launches it. ``output_dir: /`` + ``name: etc`` made the
study folder /etc (a launch would write mlflow.db and optuna.journal there), and a
relaunch into someone else's non-empty folder would scatter a study through it. Every
case must exit 2 within 5 s, name the field or the path, and create nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_hostile_spec import _stats, base_text, run_cli

PARQUET = {"kind": "parquet", "path": "data.parquet", "features": ["a"], "targets": ["b"]}
STATIC = (["validate"], ["launch", "--dry-run"])


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _run_all(spec: Path, cwd: Path, *, env: dict | None = None, commands=STATIC):
    """(command, exit code, output, seconds) of each command, run in-process in ``cwd``
    (the CLI's own code path; fast enough for the fast suite)."""
    from dlor_scale.cli import app
    env = {"DLOR_OUTPUT_DIR": str(cwd / "runs"), "MLFLOW_TRACKING_URI": None, "DLOR_OPTUNA_STORAGE": None,
           **(env or {})}
    here = os.getcwd()
    os.chdir(cwd)
    try:
        res = []
        for cmd in commands:
            t0 = time.monotonic()
            r = CliRunner().invoke(app, [*cmd, str(spec)], env=env)
            res.append((cmd, r.exit_code, r.output + (f"\n{r.exception!r}" if r.exception and r.exit_code != 2
                                                      else ""), time.monotonic() - t0))
        return res
    finally:
        os.chdir(here)


def assert_refused(spec: Path, cwd: Path, *fragments: str, env: dict | None = None, absent=()):
    """validate and launch --dry-run exit 2 within 5 s naming ``fragments``, print no
    traceback and change nothing under ``cwd`` (nor create ``absent`` paths)."""
    before = _snapshot(cwd)
    for cmd, code, text, secs in _run_all(spec, cwd, env=env):
        assert code == 2, (cmd, code, text[-2000:])
        assert "Traceback" not in text, text[-2000:]
        flat = text.replace("\n", "")
        for f in fragments:
            assert f in flat, (cmd, f, text[-2000:])
        assert secs < 5, (cmd, secs)
        assert _snapshot(cwd) == before, cmd
        for p in absent:
            assert not Path(p).exists(), (cmd, p)


def _spec(tmp_path: Path, **changes) -> Path:
    spec = tmp_path / "s.yaml"
    spec.write_text(base_text(**changes))
    return spec


# --------------------------------------------------------------------------- system folders

SYSTEM_CASES = {
    "output_dir / + name etc": ({"output_dir": "/", "name": "etc"}, ["output_dir", "/etc"], ["/etc/mlflow.db"]),
    "output_dir /etc": ({"output_dir": "/etc"}, ["output_dir", "/etc/t"], ["/etc/t"]),
    "relative ../ escape to /etc": ({"output_dir": "../" * 40 + "etc"}, ["output_dir", "/etc/t"], ["/etc/t"]),
    "output_dir /usr/lib": ({"output_dir": "/usr/lib"}, ["/usr/lib/t", "/usr"], ["/usr/lib/t"]),
    "output_dir /lib64": ({"output_dir": "/lib64"}, ["output_dir"], ["/lib64/t"]),
    "output_dir /var/lib": ({"output_dir": "/var/lib"}, ["/var/lib/t", "/var"], ["/var/lib/t"]),
    "output_dir /proc": ({"output_dir": "/proc"}, ["/proc/t"], []),
    "output_dir /dev/shm": ({"output_dir": "/dev/shm"}, ["/dev/shm/t", "/dev"], ["/dev/shm/t"]),
    "output_dir / + name boot": ({"output_dir": "/", "name": "boot"}, ["/boot"], []),
    "output_dir / + name sys": ({"output_dir": "/", "name": "sys"}, ["/sys"], []),
    "tracking_uri file:///etc": ({"tracking_uri": "file:///etc"}, ["tracking_uri", "file:///etc"], []),
    "tracking_uri sqlite in /etc": ({"tracking_uri": "sqlite:////etc/mlflow.db"}, ["tracking_uri", "/etc/mlflow.db"],
                                    ["/etc/mlflow.db"]),
    "optuna_storage sqlite:////etc/passwd": ({"optuna_storage": "sqlite:////etc/passwd"},
                                             ["optuna_storage", "/etc/passwd"], []),
    "optuna_storage journal in /usr": ({"optuna_storage": "journal:///usr/optuna.journal"},
                                       ["optuna_storage", "/usr/optuna.journal"], ["/usr/optuna.journal"]),
}


@pytest.mark.parametrize("case", list(SYSTEM_CASES), ids=list(SYSTEM_CASES))
def test_system_folders_are_refused(case, tmp_path):
    changes, fragments, absent = SYSTEM_CASES[case]
    spec = _spec(tmp_path, **changes)
    assert_refused(spec, tmp_path, *fragments, absent=absent)


def test_output_dir_from_the_environment_is_checked_too(tmp_path):
    spec = _spec(tmp_path)
    assert_refused(spec, tmp_path, "$DLOR_OUTPUT_DIR", "/etc/t", env={"DLOR_OUTPUT_DIR": "/etc"})


def test_the_home_folder_itself_is_refused_but_folders_under_it_are_not(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    spec = _spec(tmp_path, output_dir=str(tmp_path), name="home")
    assert_refused(spec, tmp_path, "home folder", str(home), env={"HOME": str(home)})
    ok = _spec(tmp_path, output_dir="~/runs")
    for cmd, code, text, _ in _run_all(ok, tmp_path, env={"HOME": str(home)}):
        assert code == 0, (cmd, text)
        assert str(home / "runs" / "t") in text.replace("\n", "") or cmd == ["validate"]


# --------------------------------------------------------------------------- malformed locations

BAD_TEXT = {
    "output_dir NUL": ({"output_dir": "runs\x00x"}, ["output_dir", "NUL"]),
    "output_dir ~nosuchuser": ({"output_dir": "~nosuchuser_dlor/x"}, ["output_dir", "~nosuchuser_dlor", "no such user"]),
    "output_dir empty": ({"output_dir": ""}, ["output_dir", "must not be empty"]),
    "tracking_uri NUL": ({"tracking_uri": "sqlite:///a\x00b"}, ["tracking_uri", "NUL"]),
    "optuna_storage NUL": ({"optuna_storage": "journal:///a\x00b"}, ["optuna_storage", "NUL"]),
    "parquet path empty": ({"target": {**PARQUET, "path": ""}}, ["target.path", "empty"]),
    "parquet path NUL": ({"target": {**PARQUET, "path": "d\x00.parquet"}}, ["target.path", "NUL"]),
    "parquet path ~nosuchuser": ({"target": {**PARQUET, "path": "~nosuchuser_dlor/d.parquet"}},
                                 ["target.path", "no such user"]),
}


@pytest.mark.parametrize("case", list(BAD_TEXT), ids=list(BAD_TEXT))
def test_malformed_locations_are_refused(case, tmp_path):
    changes, fragments = BAD_TEXT[case]
    if "target" in changes:   # a Parquet target's d_in is its column count: one feature
        changes = {**changes, "families": {"dense": {"width": {"min": 2, "max": 40}, "depth": 1}},
                   "budgets": [97]}
    spec = _spec(tmp_path, **changes)
    assert_refused(spec, tmp_path, *fragments)


# --------------------------------------------------------------------------- stores of another kind

def test_a_store_url_pointing_at_another_kind_of_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a database\n")
    cases = [
        ({"optuna_storage": "sqlite:///notes.txt"}, ["optuna_storage", "not an SQLite database"]),
        ({"tracking_uri": "sqlite:///notes.txt"}, ["tracking_uri", "not an SQLite database"]),
        ({"optuna_storage": f"journal:///{tmp_path / 'notes.txt'}"}, ["optuna_storage", "not an Optuna journal"]),
        ({"tracking_uri": (tmp_path / "notes.txt").as_uri()}, ["tracking_uri", "not a folder"]),
        ({"optuna_storage": f"sqlite:///{tmp_path}"}, ["optuna_storage", "not a regular file"]),
    ]
    for changes, fragments in cases:
        spec = _spec(tmp_path, **changes)
        assert_refused(spec, tmp_path, *fragments, str(tmp_path))
        spec.unlink()


# --------------------------------------------------------------------------- the study folder itself

def test_a_non_empty_folder_that_is_not_a_study_is_refused(tmp_path):
    folder = tmp_path / "runs" / "t"
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("precious\n")
    spec = _spec(tmp_path)
    assert_refused(spec, tmp_path, str(folder), "not empty", "no study.json")
    assert (folder / "thesis.tex").read_text() == "precious\n"


@pytest.mark.parametrize("content, fragment", [
    ('{"name": "other", "spec_hash": "x"}', "holds another study ('other'"),
    ("{not json", "unreadable"),
    ("[1, 2]", "unreadable"),
])
def test_a_folder_holding_another_or_a_broken_study_json_is_refused(content, fragment, tmp_path):
    folder = tmp_path / "runs" / "t"
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(content)
    spec = _spec(tmp_path)
    assert_refused(spec, tmp_path, str(folder), fragment)


def test_a_study_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "t").write_text("x")
    spec = _spec(tmp_path)
    assert_refused(spec, tmp_path, str(tmp_path / "runs" / "t"), "not a folder")


@pytest.mark.parametrize("setup", ["empty folder", "only a killed first study.json write", "this study's folder",
                                   "under /var/tmp"])
def test_fresh_empty_or_own_folders_are_accepted(setup, tmp_path):
    folder = tmp_path / "runs" / "t"
    changes = {}
    if setup == "empty folder":
        folder.mkdir(parents=True)
    elif setup == "only a killed first study.json write":
        folder.mkdir(parents=True)
        (folder / "study.json.tmp4242").write_text('{"na')
    elif setup == "this study's folder":
        folder.mkdir(parents=True)
        (folder / "study.json").write_text(json.dumps({"name": "t", "spec_hash": "x"}))
        (folder / "mlflow.db").write_bytes(b"")
    else:
        changes = {"output_dir": f"/var/tmp/dlor-test-{os.getpid()}-{tmp_path.name}"}
        folder = Path(changes["output_dir"]) / "t"
    spec = _spec(tmp_path, **changes)
    before = _snapshot(tmp_path)
    for cmd, code, text, _ in _run_all(spec, tmp_path):
        assert code == 0, (cmd, text)
    assert _snapshot(tmp_path) == before
    if setup == "under /var/tmp":
        assert not folder.parent.exists()


# --------------------------------------------------------------------------- the checks themselves

def test_system_folder_classification(tmp_path, monkeypatch):
    from dlor_scale.spec import system_folder
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for p in ["/", "/etc", "/etc/x/y", "/usr", "/usr/local/x", "/bin", "/sbin/x", "/lib", "/lib64/x",
              "/libx32", "/boot", "/dev/shm/x", "/proc/1", "/sys/x", "/var", "/var/lib/x", "/var/log",
              str(tmp_path / "home"), "//etc/x"]:
        assert system_folder(Path(p)) is not None, p
    for p in ["/var/tmp", "/var/tmp/x/y", "/tmp/x", str(tmp_path / "home" / "runs"), "/work/x", "/opt/x",
              "/library", "/variant/x"]:
        assert system_folder(Path(p)) is None, p


def test_a_symlink_into_a_system_folder_is_refused(tmp_path):
    (tmp_path / "out").symlink_to("/etc")
    spec = _spec(tmp_path, output_dir="out")
    assert_refused(spec, tmp_path, "/etc")


def test_launch_api_checks_the_folder_before_writing(tmp_path, monkeypatch):
    """`dlor_scale.tune.launch` (the Python entry point) refuses a foreign folder too."""
    from dlor_scale.errors import SpecError
    from dlor_scale.spec import load_study
    from dlor_scale.tune import launch
    folder = tmp_path / "runs" / "t"
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text("1\n")
    monkeypatch.setenv("DLOR_OUTPUT_DIR", str(tmp_path / "runs"))
    spec = _spec(tmp_path)
    with pytest.raises(SpecError, match="no study.json"):
        launch(load_study(spec), str(spec))
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv"]


# --------------------------------------------------------------------------- the real launch, in a fresh process

LAUNCH_CASES = {
    "output_dir / + name etc": ({"output_dir": "/", "name": "etc"}, ["/etc"], ["/etc/mlflow.db", "/etc/optuna.journal"]),
    "relative ../ escape": ({"output_dir": "../" * 40 + "etc"}, ["/etc/t"], ["/etc/t"]),
    "optuna_storage sqlite:////etc/passwd": ({"optuna_storage": "sqlite:////etc/passwd"}, ["/etc/passwd"], []),
    "foreign folder": ({}, ["no study.json"], []),
}


@pytest.mark.parametrize("case", list(LAUNCH_CASES), ids=list(LAUNCH_CASES))
def test_launch_refuses_before_anything_is_written(case, tmp_path):
    """`launch` itself (not only the static commands): exit 2 in a fresh process within
    5 s of its imports, nothing written."""
    changes, fragments, absent = LAUNCH_CASES[case]
    if case == "foreign folder":
        (tmp_path / "runs" / "t").mkdir(parents=True)
        (tmp_path / "runs" / "t" / "notes.txt").write_text("mine\n")
    spec = _spec(tmp_path, **changes)
    before = _snapshot(tmp_path)
    r = run_cli(["launch", "--no-progress", str(spec)], tmp_path)
    text = (r.stdout + r.stderr).replace("\n", "")
    assert r.returncode == 2, text[-2000:]
    assert "Traceback" not in text
    for f in fragments:
        assert f in text, (f, text[-2000:])
    assert _stats(r.stderr)[1] < 5
    assert _snapshot(tmp_path) == before
    for p in absent:
        assert not Path(p).exists(), p

"""The recorded fit run, as a user sees it in the MLflow web UI.

A small study of its own (dlor_deep and dlor_wide × 4 budgets, few trials) is launched
with the CLI; then a real ``mlflow server`` is started on the study's SQLite store and the
fit run's page and its ``scaling.png`` artifact view are rendered by headless Chromium
(the Debian ``chromium`` package at /usr/bin/chromium, driven by playwright-python with
``executable_path``; ``playwright install`` is never needed). Playwright waits for what
the page must show instead of a fixed virtual-time budget: the Chromium command line's
``--virtual-time-budget --screenshot`` hung here now and then. The screenshot of the
artifact view is kept in the test's tmp dir; with DLOR_UPDATE_DOCS_FIGURES=1 it is copied to
``docs/figures/mlflow_fit_run.png``.

Needs Chromium (``apt-get install -y chromium``) and playwright (test extra); skips with
the reason when either is absent (CI turns skips into failures).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOCS_FIGURE = REPO / "docs" / "figures" / "mlflow_fit_run.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIT_ARTIFACTS = ("comparisons.json", "curves.json", "points.parquet", "scaling.png")
VIEWPORT = {"width": 1400, "height": 1000}
UI_WAIT_MS = 180_000  # hang guard for the single-page app on a loaded machine, not a perf bound

# Two families × four budgets, three trials a cell, no confirmation phase: a couple of
# minutes on a busy 2-core machine. Budgets stay small (dlor_deep depth ≤ 16) so both
# families train and the figure shows two real curves.
SPEC = {
    "name": "uicheck",
    "description": "MLflow UI check: deep vs wide DLoR at four budgets.",
    "target": {"kind": "teacher", "d_in": 4, "widths": [32, 32], "activation": "tanh",
               "n_train": 512, "n_val": 256, "n_test": 512, "seed": 0},
    "activation": "tanh",
    "budgets": [120, 200, 300, 450],
    "tolerance": 0.05,
    "policy": "axis",
    "families": {
        "dlor_deep": {"width": 8, "depth": {"min": 1, "max": 64}, "rank": 1, "diag": "scalar"},
        "dlor_wide": {"width": 8, "depth": 1, "rank": 1, "branches": {"min": 1, "max": 64},
                      "diag": "scalar"},
    },
    "search_space": {"lr": {"type": "float", "low": 3.0e-3, "high": 3.0e-2, "log": True},
                     "init_scale": {"type": "float", "low": 0.5, "high": 1.5}},
    "sampler": {"kind": "random", "seed": 0},
    "trials_per_cell": 4,   # 4 trials in 2 slots: successive halving prunes, pruned members are shown
    "cohort_size": 2,
    "epochs": 150,
    "report_every": 10,
    "metric": "rmse",
    "resources": {"cpu": 1, "gpu": 0},
    "device": "cpu",
    "compile": False,
}


def chromium_path() -> str:
    for cand in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser")):
        if cand and Path(cand).exists():
            return cand
    pytest.skip("Chromium not installed (apt-get install -y chromium); needed to render the MLflow UI")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    env = dict(os.environ)
    for k in ("MLFLOW_TRACKING_URI", "DLOR_OPTUNA_STORAGE", "RAY_ADDRESS", "DLOR_OUTPUT_DIR"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium under playwright (no downloaded browser)."""
    exe = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small study launched with the CLI (its own output dir, nothing shared)."""
    tmp = tmp_path_factory.mktemp("uistudy")
    spec = {**SPEC, "output_dir": str(tmp / "runs")}
    path = tmp / "uicheck.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cli = Path(sys.executable).parent / "dlor-scale"
    t0 = time.monotonic()
    proc = subprocess.run([str(cli), "launch", str(path), "--no-progress"], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=3600)
    print(f"\nui study launch: rc={proc.returncode} in {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    study_dir = tmp / "runs" / "uicheck"
    return {"dir": study_dir, "uri": f"sqlite:///{study_dir / 'mlflow.db'}", "tmp": tmp, "stdout": proc.stdout}


@pytest.fixture(scope="module")
def server(study):
    """`mlflow server` on the study's store, in its own process group; killed afterwards."""
    port = free_port()
    log_path = study["tmp"] / "mlflow-server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", study["uri"],
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=study["tmp"], env=clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # hang guard (the server imports a lot)
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server never answered /health:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        # SIGTERM first; `mlflow server` (3.x) may linger with its job-consumer children
        # after its uvicorn worker has stopped, so the whole group is then SIGKILLed.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        log.close()


@pytest.fixture(scope="module")
def fit_run(server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)  # through the server, as the UI reads it
    exp = client.get_experiment_by_name("uicheck")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'fit'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return exp.experiment_id, runs[0]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, data[:16]
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR


def test_fit_artifacts_served(server, fit_run):
    _, run = fit_run
    rid = run.info.run_id
    listing = requests.get(f"{server}/ajax-api/2.0/mlflow/artifacts/list", params={"run_uuid": rid},
                           timeout=60)
    assert listing.status_code == 200, listing.text
    files = {f["path"]: f for f in listing.json().get("files", [])}
    assert set(FIT_ARTIFACTS) <= set(files), files
    png = requests.get(f"{server}/get-artifact", params={"path": "scaling.png", "run_uuid": rid}, timeout=60)
    assert png.status_code == 200
    width, height = _png_size(png.content)
    assert width > 100 and height > 100, (width, height)  # a real figure
    assert len(png.content) == int(files["scaling.png"]["file_size"])


def test_run_page_shows_fit_metrics(browser, server, fit_run, tmp_path):
    exp_id, run = fit_run
    url = f"{server}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(url, timeout=UI_WAIT_MS)
        page.get_by_text("dlor_deep.alpha", exact=True).first.wait_for(timeout=UI_WAIT_MS)
        text = page.inner_text("body")
        for s in ("fit saturating", "dlor_deep.alpha", "dlor_wide.alpha",
                  "dlor_deep_vs_dlor_wide.delta_alpha", run.info.run_id):
            assert s in text, f"{s!r} not shown on the run page {url}"
        shot = tmp_path / "run_overview.png"
        page.screenshot(path=str(shot))
        assert _png_size(shot.read_bytes()) == (VIEWPORT["width"], VIEWPORT["height"])
        print(f"\nrun page screenshot: {shot}")
    finally:
        page.close()


def test_artifact_view_renders_scaling_png(browser, server, fit_run, tmp_path):
    exp_id, run = fit_run
    url = f"{server}/#/experiments/{exp_id}/runs/{run.info.run_id}/artifacts/scaling.png"
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(url, timeout=UI_WAIT_MS)
        # the preview is the served PNG, loaded and decoded by the browser (not a broken image)
        page.wait_for_function(
            "() => { const i = document.querySelector('img[alt=\"scaling.png\"]');"
            " return i !== null && i.complete && i.naturalWidth > 0; }", timeout=UI_WAIT_MS)
        size = page.locator('img[alt="scaling.png"]').first.evaluate("i => [i.naturalWidth, i.naturalHeight]")
        served = requests.get(f"{server}/get-artifact",
                              params={"path": "scaling.png", "run_uuid": run.info.run_id}, timeout=60)
        assert tuple(size) == _png_size(served.content), size
        for name in FIT_ARTIFACTS:  # the artifact tree lists every file of the fit
            assert page.get_by_text(name, exact=True).count() >= 1, f"{name} not listed in {url}"
        shot = tmp_path / "mlflow_fit_run.png"
        page.screenshot(path=str(shot))
        assert _png_size(shot.read_bytes()) == (VIEWPORT["width"], VIEWPORT["height"])
    finally:
        page.close()
    if os.environ.get("DLOR_UPDATE_DOCS_FIGURES"):   # opt-in: a test run must not rewrite tracked files
        DOCS_FIGURE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_FIGURE)
        print(f"\nartifact view screenshot: {shot} → {DOCS_FIGURE}")


# --------------------------------------------------------------------------- readability (issue 14)

def _goto_runs_table(page, url: str) -> str:
    """Open ``url`` and wait for the runs table (its "Run Name" header); the final URL."""
    page.goto(url, timeout=UI_WAIT_MS)
    page.get_by_text("Run Name", exact=True).first.wait_for(timeout=UI_WAIT_MS)
    page.get_by_text("matching runs").first.wait_for(timeout=UI_WAIT_MS)
    return page.url


def _printed_url(study, server) -> str:
    """The UI link `launch` printed, pointed at the test's server."""
    line = next(x for x in study["stdout"].splitlines() if x.startswith("browse:"))
    printed = line.split("→", 1)[1].strip()
    assert printed.startswith("http://127.0.0.1:5000/#/experiments/"), line
    return server + printed.removeprefix("http://127.0.0.1:5000")


def test_experiment_opens_on_the_runs_view(browser, server, study, fit_run):
    """The link `launch` prints opens the runs table ("Model training"), not MLflow 3's
    GenAI page; the experiment is tagged as model training for UIs that read it.

    MLflow 3.17.2's UI ignores that tag: its experiment page takes the kind from a
    workflow type, the ``workflowType`` URL parameter or else the browser's localStorage
    ``mlflow.workflowType_v1`` (set by the sidebar's GenAI / Model training switch),
    defaulting to GenAI; no server setting feeds it. A plain experiment link in a fresh
    browser therefore lands on GenAI's overview, which is checked too: when an MLflow
    upgrade honours the tag, that check fails and the README's browsing section and
    `ui_url`'s query can be revisited."""
    from mlflow.tracking import MlflowClient
    exp_id, _ = fit_run
    exp = MlflowClient(server).get_experiment(exp_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development", exp.tags
    assert "dlor-scale study" in exp.tags.get("mlflow.note.content", "")
    url = _printed_url(study, server)
    assert url.endswith(f"/#/experiments/{exp_id}/runs?workflowType=machine_learning"), url
    page = browser.new_page(viewport=VIEWPORT)  # a fresh context: no stored workflow type
    try:
        final = _goto_runs_table(page, url)
        assert f"/experiments/{exp_id}/runs" in final, final
        text = page.inner_text("body")
        assert "No data available" not in text
        assert "uicheck" in text  # the study run heads the table
        page.screenshot(path=str(study["tmp"] / "runs_view.png"))
    finally:
        page.close()
    page = browser.new_page(viewport=VIEWPORT)  # why the link carries the query (see above)
    try:
        page.goto(f"{server}/#/experiments/{exp_id}", timeout=UI_WAIT_MS)
        page.wait_for_url("**workflowType=**", timeout=UI_WAIT_MS)  # the UI's redirect to a tab
        assert "workflowType=genai" in page.url and "/runs" not in page.url, (
            f"a plain experiment link now opens {page.url}: MLflow may honour mlflow.experimentKind, "
            "revisit README 'Browse the runs' and tracking.ui_url")
    finally:
        page.close()


def _members(server, exp_id):
    from mlflow.tracking import MlflowClient
    return MlflowClient(server).search_runs([exp_id], filter_string="tags.kind = 'member'", max_results=1000)


NAME_COL = '[col-id="attributes.`Run Name`"]'   # the runs table's (AG Grid) name cell
STATUS_ICON = '[col-id="runDateAndNestInfo"] svg'  # "Created" cell: the run-status icon, then the date

# Per table row: the displayed name and its visible part, the longest prefix that lies
# left of where the cell cuts it (the ellipsis' own width included), measured from the
# laid-out text; and the markup of its status icon (MLflow draws one per status, no label).
_ROW_JS = """(row) => {
    const a = row.querySelector('a'); const s = a.querySelector('span') || a; const t = s.firstChild;
    const name = t.textContent;
    const truncated = s.scrollWidth > s.clientWidth;
    const ctx = document.createElement('canvas').getContext('2d'); ctx.font = getComputedStyle(s).font;
    const limit = s.getBoundingClientRect().left + s.clientWidth - (truncated ? ctx.measureText('\\u2026').width : 0) + 0.5;
    const r = document.createRange(); r.setStart(t, 0);
    let k = name.length;
    for (; k > 0; k--) { r.setEnd(t, k); if (r.getBoundingClientRect().right <= limit) break; }
    return {name, shown: a.innerText, visible: name.slice(0, k), truncated};
}"""


@pytest.fixture(scope="module")
def runs_table(browser, server, study, fit_run):
    """Walk the runs table as a user would from the printed link: expand the study run,
    then each cell run in turn (MLflow nests children under their parent, collapsed), and
    record every row as displayed. Rows are found by run id (AG Grid's ``row-id``)."""
    from mlflow.tracking import MlflowClient
    exp_id, _ = fit_run
    client = MlflowClient(server)
    study_run, = client.search_runs([exp_id], filter_string="tags.kind = 'study'")
    cells = client.search_runs([exp_id], filter_string="tags.kind = 'cell'")
    members = _members(server, exp_id)
    children: dict = {}
    for m in members:
        children.setdefault(m.data.tags["mlflow.parentRunId"], []).append(m)
    page = browser.new_page(viewport=VIEWPORT)

    def row(run_id):
        return page.locator(f'[row-id="{run_id}"] {NAME_COL}')

    def read(run_id):
        r = row(run_id)
        r.wait_for(timeout=UI_WAIT_MS)
        info = r.evaluate(_ROW_JS)
        icon = page.locator(f'[row-id="{run_id}"] {STATUS_ICON}').first
        info["icon"] = icon.evaluate("e => e.outerHTML") if icon.count() else None
        return info

    try:
        _goto_runs_table(page, _printed_url(study, server))
        shown = {"study": read(study_run.info.run_id), "cells": {}, "members": {}}
        assert page.locator(f"[row-id] {NAME_COL}").count() == 1, "the study run alone heads the table"
        row(study_run.info.run_id).locator("button").click()  # expand the study: its cells appear
        for c in cells:
            shown["cells"][c.info.run_id] = read(c.info.run_id)
        for c in cells:
            kids = children.get(c.info.run_id, [])
            assert kids, c.info.run_name
            assert row(kids[0].info.run_id).count() == 0, "members start collapsed under their cell"
            row(c.info.run_id).locator("button").click()      # expand the cell
            for m in kids:
                shown["members"][m.info.run_id] = read(m.info.run_id)
            if c is cells[0]:
                page.screenshot(path=str(study["tmp"] / "runs_table_cell.png"))
            row(c.info.run_id).locator("button").click()      # and fold it again
            row(kids[0].info.run_id).wait_for(state="detached", timeout=UI_WAIT_MS)
    finally:
        page.close()
    return {"study": study_run, "cells": cells, "members": members, "children": children, "shown": shown}


def test_member_names_are_short_and_distinct(runs_table):
    """Names lead with the member's own key (``t3``, ``c5s0``): distinct within a cell
    where the UI cuts them, unique in the study. In the browser: every member shows in the
    runs table under its cell, with its name, and the part of each name left visible by
    the name column differs between the members of a cell (a name that led with the
    cell, or a shared prefix, would be cut to the same text)."""
    members = runs_table["members"]
    shown = runs_table["shown"]["members"]
    for cell in runs_table["cells"]:
        kids = runs_table["children"][cell.info.run_id]
        rows = [shown[m.info.run_id] for m in kids]
        assert [r["name"] for r in rows] == [m.info.run_name for m in kids], (cell.info.run_name, rows)
        assert all(r["shown"] == r["name"] for r in rows), rows
        visible = [r["visible"] for r in rows]
        assert all(len(v) >= 2 for v in visible), (cell.info.run_name, visible)
        assert len(set(visible)) == len(visible), (cell.info.run_name, visible)
    assert any(r["truncated"] for r in shown.values()), "the name column is expected to cut member names"
    names = [r["name"] for r in shown.values()]
    assert len(names) == len(members) and len(set(names)) == len(names), names
    # and the stored names
    names = [m.info.run_name for m in members]
    assert len(set(names)) == len(names), names
    by_cell: dict = {}
    for m in members:
        head = m.info.run_name.split(" ")[0]
        assert len(head) <= 8 and head[0] in "tc", m.info.run_name
        by_cell.setdefault(m.data.tags["dlor.cell"], []).append(head)
    for cell, heads in by_cell.items():
        assert len(set(heads)) == len(heads), (cell, heads)


def test_a_pruned_member_is_distinguishable(browser, server, fit_run, runs_table):
    exp_id, _ = fit_run
    members = runs_table["members"]
    pruned = [m for m in members if m.data.tags.get("state") == "pruned"]
    done = [m for m in members if m.data.tags.get("state") == "completed"]
    assert pruned and done, "the UI study must prune some members"
    # in the runs table, "pruned" is in the visible part of a pruned member's name only
    shown = runs_table["shown"]["members"]
    for m in pruned:
        assert "pruned" in shown[m.info.run_id]["visible"], shown[m.info.run_id]
    for m in done:
        assert "pruned" not in shown[m.info.run_id]["name"], shown[m.info.run_id]
    assert any(len({m.data.tags["state"] for m in kids}) > 1 for kids in runs_table["children"].values()), \
        "some cell shows pruned and completed members side by side"
    for m in pruned:
        assert m.data.tags.get("dlor.pruned") == "1" and " pruned" in m.info.run_name, m.info.run_name
        assert "PRUNED" in m.data.tags.get("mlflow.note.content", "")
    for m in done:
        assert "pruned" not in m.info.run_name and "dlor.pruned" not in m.data.tags
    # its page says so (name and description)
    m = pruned[0]
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.goto(f"{server}/#/experiments/{exp_id}/runs/{m.info.run_id}?workflowType=machine_learning",
                  timeout=UI_WAIT_MS)
        page.get_by_text("PRUNED", exact=False).first.wait_for(timeout=UI_WAIT_MS)
        assert m.info.run_name in page.inner_text("body")
    finally:
        page.close()
    # member durations are their training, not the MLflow write
    for m in members:
        wall = m.data.metrics["wall_time_s"]
        dur = (m.info.end_time - m.info.start_time) / 1000
        assert dur >= 0.9 * wall, (m.info.run_name, dur, wall)


def test_cell_runs_finished_and_fit_says_what_is_identified(browser, server, fit_run, runs_table):
    exp_id, fit = fit_run
    cells = runs_table["cells"]
    assert len(cells) == 8, [c.info.run_name for c in cells]  # 2 families × 4 budgets
    assert all(c.info.status == "FINISHED" for c in cells), [(c.info.run_name, c.info.status) for c in cells]
    # in the runs table: every cell is listed under the study, by its name, with the status
    # icon of a finished run (the study's and the members'; the API says they finished)
    shown = runs_table["shown"]
    assert runs_table["study"].info.status == "FINISHED"
    finished_icon = shown["study"]["icon"]
    assert finished_icon, shown["study"]
    for c in cells:
        row = shown["cells"][c.info.run_id]
        assert row["name"] == c.info.run_name and row["visible"] == c.info.run_name, row
        assert row["icon"] == finished_icon, (c.info.run_name, row["icon"], finished_icon)
    for m in runs_table["members"]:
        assert m.info.status == "FINISHED" and shown["members"][m.info.run_id]["icon"] == finished_icon
    t = fit.data.tags
    assert t.get("dlor.identified") in ("all", "partial", "none"), t
    note = t.get("mlflow.note.content", "")
    for fam in ("dlor_deep", "dlor_wide"):
        ok = fit.data.metrics[f"{fam}.alpha_identified"] == 1
        assert (f"{fam}: α NOT IDENTIFIED" in note) != ok, note
        assert (fam in t["dlor.not_identified"].split(",")) != ok
    if t["dlor.identified"] != "all":
        assert "not identified" in fit.info.run_name
    page = browser.new_page(viewport=VIEWPORT)
    try:
        c = cells[0]
        page.goto(f"{server}/#/experiments/{exp_id}/runs/{c.info.run_id}?workflowType=machine_learning",
                  timeout=UI_WAIT_MS)
        page.get_by_text("Finished", exact=True).first.wait_for(timeout=UI_WAIT_MS)
    finally:
        page.close()

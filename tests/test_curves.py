"""Query API: member runs → scaling points → per-family curves, tables, JSON and a plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from dlor_scale.errors import DataError, FitError
from dlor_scale.scaling import POINT_COLUMNS, Curves, FamilyCurve, points_from_runs


def test_dlor_scale_curves_is_the_function_whatever_was_imported():
    """`dlor_scale.curves` is the query function; the module it uses has its own name
    (`scaling`), so importing that module can never replace the function."""
    import types

    import dlor_scale
    import dlor_scale.analysis
    import dlor_scale.scaling
    from dlor_scale import curves

    assert curves is dlor_scale.curves and not isinstance(curves, types.ModuleType)
    assert curves.__module__ == "dlor_scale"


# --------------------------------------------------------------------------- runs table


def _run(rid, family, budget, phase, state, trial, seed, test, val, confirm_of=None,
         cell=None, study="s1", n_params=None):
    return {
        "run_id": f"r{rid}", "study": study, "cell": cell or f"{family}-{budget}",
        "family": family, "budget": budget, "n_params_total": n_params or budget + 7,
        "phase": phase, "state": state, "optuna_trial": trial, "seed": seed,
        "test_error": test, "best_val": val,
        "epochs_to_threshold": math.nan if state != "completed" else 3.0,
        "wall_time_s": 1.5, "confirm_of": confirm_of, "param_lr": 1e-3 * (trial + 1),
    }


RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("study", pa.string()), ("cell", pa.string()),
    ("family", pa.string()), ("budget", pa.int64()), ("n_params_total", pa.int64()),
    ("phase", pa.string()), ("state", pa.string()), ("optuna_trial", pa.int64()),
    ("seed", pa.int64()), ("test_error", pa.float64()), ("best_val", pa.float64()),
    ("epochs_to_threshold", pa.float64()), ("wall_time_s", pa.float64()),
    ("confirm_of", pa.int64()), ("param_lr", pa.float64()),
])


def hand_built_runs() -> pa.Table:
    nan = math.nan
    rows = [
        # dense @1000: trial 2 is best completed; a *pruned* trial has a lower best_val and
        # must be ignored; 3 completed confirm runs of trial 2 + 1 diverged one.
        _run(1, "dense", 1000, "search", "completed", 0, 0, 0.30, 0.31),
        _run(2, "dense", 1000, "search", "pruned", 1, 0, nan, 0.10),
        _run(3, "dense", 1000, "search", "completed", 2, 0, 0.26, 0.25),
        _run(4, "dense", 1000, "search", "diverged", 3, 0, nan, nan),
        _run(5, "dense", 1000, "confirm", "completed", 10, 1, 0.24, 0.24, confirm_of=2),
        _run(6, "dense", 1000, "confirm", "completed", 11, 2, 0.27, 0.26, confirm_of=2),
        _run(7, "dense", 1000, "confirm", "completed", 12, 3, 0.27, 0.27, confirm_of=2),
        _run(8, "dense", 1000, "confirm", "diverged", 13, 4, nan, nan, confirm_of=2),
        # a confirm run of a *different* trial (0) must not be averaged in
        _run(9, "dense", 1000, "confirm", "completed", 14, 1, 0.99, 0.99, confirm_of=0),
        # dense @4000: no confirm runs → the search member's own test error, tie on best_val
        # broken by the lower trial number
        _run(10, "dense", 4000, "search", "completed", 5, 0, 0.15, 0.14),
        _run(11, "dense", 4000, "search", "completed", 4, 0, 0.16, 0.14),
        # dlor_deep @1000: every search run diverged or was pruned → a NaN point
        _run(12, "dlor_deep", 1000, "search", "diverged", 0, 0, nan, nan),
        _run(13, "dlor_deep", 1000, "search", "diverged", 1, 0, nan, nan),
        _run(14, "dlor_deep", 1000, "search", "pruned", 2, 0, nan, 0.2),
        # dlor_deep @4000: trial numbers restart per cell; the confirm run of trial 0 in
        # *this* cell is matched, not dense's trial 0
        _run(15, "dlor_deep", 4000, "search", "completed", 0, 0, 0.12, 0.11),
        _run(16, "dlor_deep", 4000, "confirm", "completed", 1, 1, 0.13, 0.12, confirm_of=0),
    ]
    return pa.Table.from_pylist(rows, schema=RUN_SCHEMA)


def test_points_from_runs_rules():
    pts = points_from_runs(hand_built_runs())
    assert tuple(pts.column_names) == POINT_COLUMNS
    assert pts.schema.field("budget").type == pa.int64()
    rows = {(r["family"], r["budget"]): r for r in pts.to_pylist()}
    assert len(rows) == 4

    d1 = rows[("dense", 1000)]
    assert d1["best_trial"] == 2  # not the pruned trial 1 with best_val 0.10
    errs = np.array([0.24, 0.27, 0.27])
    assert d1["error"] == pytest.approx(errs.mean())
    assert d1["stderr"] == pytest.approx(errs.std(ddof=1) / math.sqrt(3))
    assert d1["n_seeds"] == 3 and d1["n_params"] == 1007
    assert d1["source"].startswith("confirm") and "1 of 4 confirm runs" in d1["source"]

    d4 = rows[("dense", 4000)]
    assert d4["best_trial"] == 4 and d4["error"] == 0.16
    assert math.isnan(d4["stderr"]) and d4["n_seeds"] == 1 and d4["source"] == "search"

    z = rows[("dlor_deep", 1000)]
    assert math.isnan(z["error"]) and z["best_trial"] is None and z["n_seeds"] == 0
    assert "2 diverged" in z["source"] and "1 pruned" in z["source"]

    w = rows[("dlor_deep", 4000)]
    assert w["error"] == 0.13 and w["n_seeds"] == 1 and w["source"] == "confirm"
    assert math.isnan(w["stderr"])  # one confirm seed: no spread to estimate


def diag_runs(**cols) -> pa.Table:
    """hand_built_runs plus the member-diagnostic columns (records.py), given per run_id."""
    t = hand_built_runs()
    n = t.num_rows
    ids = t.column("run_id").to_pylist()
    defaults = {"baseline_val": 1.0, "undertrained": 0.0, "stopped_early": 1.0,
                "best_epoch": 10.0, "lr_edge": ""}
    for name, default in defaults.items():
        per = cols.get(name, {})
        vals = [per.get(i, default) for i in ids]
        typ = pa.string() if name == "lr_edge" else pa.float64()
        t = t.append_column(name, pa.array(vals[:n], type=typ))
    return t


def test_points_carry_cell_flags_of_the_runs_they_are_read_from():
    t = diag_runs(
        # dense@1000: the point is read from trial 2's confirm runs r5–r7; two of three are
        # undertrained → the point is; the pruned trial's flags do not matter
        undertrained={"r3": 0.0, "r2": 1.0, "r5": 1.0, "r6": 1.0},
        # dense@4000 (no confirm runs): selected trial 4 (r11) has its lr at the top of the
        # range; trial 5's (not selected) low edge is ignored
        lr_edge={"r11": "high", "r10": "low", "r15": "low"},
        # dlor_deep@4000: read from confirm run r16, best_val 0.12 ≥ 0.9 × baseline 0.12 →
        # not trained; lr_edge comes from the selected configuration (r15)
        baseline_val={"r15": 0.12, "r16": 0.12},
    )
    rows = {(r["family"], r["budget"]): r for r in points_from_runs(t).to_pylist()}
    assert rows[("dense", 1000)]["flags"] == "undertrained"
    assert rows[("dense", 4000)]["flags"] == "lr_edge:high"
    assert rows[("dlor_deep", 4000)]["flags"] == "lr_edge:low,not_trained"
    assert rows[("dlor_deep", 1000)]["flags"] == ""  # no completed member: nothing to judge
    # the selected search member alone undertrained, its confirm runs not: clean point
    t1 = diag_runs(undertrained={"r3": 1.0, "r5": 1.0})
    assert {(r["family"], r["budget"]): r["flags"] for r in points_from_runs(t1).to_pylist()}[
        ("dense", 1000)] == ""
    # 0.9 × baseline is the line: just under it is clean
    t2 = diag_runs(baseline_val={"r16": 0.12 / 0.9 + 1e-6})
    assert {r["family"]: r["flags"] for r in points_from_runs(t2).to_pylist()
            if r["budget"] == 4000}["dlor_deep"] == ""


def test_points_without_diagnostics_are_unflagged():
    """Old tables have no diagnostic columns; nulls mean unknown: no flag either way."""
    pts = points_from_runs(hand_built_runs())
    assert set(pts.column("flags").to_pylist()) == {""}
    t = diag_runs(undertrained={"r3": math.nan}, lr_edge={"r11": None},
                  baseline_val={"r15": math.nan})
    assert set(points_from_runs(t).column("flags").to_pylist()) == {""}


def test_points_from_runs_missing_column():
    t = hand_built_runs().drop_columns(["best_val"])
    with pytest.raises(DataError, match="best_val"):
        points_from_runs(t)


# --------------------------------------------------------------------------- curves


def synth_points(seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    P = np.geomspace(1e3, 1e6, 8).round().astype(int)
    laws = {"dense": (5e-3, 1.0, 0.4), "dlor_deep": (1e-3, 2.0, 0.5)}
    rows = []
    for fam, (E, A, a) in laws.items():
        for p in P:
            err = (E + A * p**-a) * math.exp(0.005 * rng.standard_normal())
            rows.append({"family": fam, "budget": int(p), "n_params": int(p), "error": err,
                         "stderr": 0.005 * err, "n_seeds": 3, "best_trial": 1,
                         "source": "confirm", "flags": ""})
    for p in P:  # an all-diverged family
        rows.append({"family": "rank1", "budget": int(p), "n_params": int(p),
                     "error": math.nan, "stderr": math.nan, "n_seeds": 0,
                     "best_trial": None, "source": "none: 0 completed search runs",
                     "flags": ""})
    from dlor_scale.scaling import POINT_SCHEMA

    return pa.Table.from_pylist(rows, schema=POINT_SCHEMA)


@pytest.fixture(scope="module")
def curves() -> Curves:
    return Curves.from_points(synth_points(), n_boot=200, seed=0, study="demo")


def test_curves_fit_every_family_and_isolate_the_bad_one(curves):
    assert curves.families == ["dense", "dlor_deep", "rank1"]
    d = curves["dlor_deep"]
    assert isinstance(d, FamilyCurve) and d.fit is not None
    assert d.alpha == pytest.approx(0.5, abs=0.01)
    assert d.ci()["alpha"][0] < 0.5 < d.ci()["alpha"][1]
    assert d.extrapolation["ok"] is True and d.ok
    assert d.points.num_rows == 8
    assert d.params_for(float(d.predict(1e7))) == pytest.approx(1e7, rel=1e-6)
    assert curves.family("dense").alpha == pytest.approx(0.4, abs=0.02)

    bad = curves["rank1"]
    assert bad.fit is None and math.isnan(bad.alpha) and not bad.ok
    assert any("all 8 errors are NaN" in f and "rank1" in f for f in bad.flags)
    assert math.isnan(bad.ci()["alpha"][0]) and bad.params_for(0.1) is None
    assert np.isnan(bad.predict([1e4])).all()
    with pytest.raises(KeyError, match="no family 'moe'"):
        curves["moe"]


def test_curves_compare(curves):
    c = curves.compare("dlor_deep", "dense", target_error=0.006)
    assert c["delta_alpha"] == pytest.approx(0.1, abs=0.03)
    assert c["p_a_steeper"] > 0.95
    assert c["params_for"]["dlor_deep"]["P"] is not None
    with pytest.raises(FitError, match="rank1"):
        curves.compare("dense", "rank1")


def test_curves_tables_and_json(curves):
    df = curves.to_pandas()
    assert list(df["family"]) == curves.families
    for col in ("alpha", "alpha_lo", "alpha_hi", "E", "E_lo", "A", "A_hi", "converged",
                "extrapolation_ok", "extrapolation_max_rel_err", "flags"):
        assert col in df.columns
    row = df.set_index("family").loc["dlor_deep"]
    assert row["alpha_lo"] < row["alpha"] < row["alpha_hi"]
    assert bool(row["extrapolation_ok"]) is True
    assert math.isnan(df.set_index("family").loc["rank1", "alpha"])

    t = curves.to_arrow()
    assert isinstance(t, pa.Table) and t.num_rows == 3
    assert t.schema.field("flags").type == pa.list_(pa.string())
    assert t.schema.field("at_bounds").type == pa.list_(pa.string())
    assert t.schema.field("alpha").type == pa.float64()
    assert t.column("extrapolation_ok").to_pylist() == [True, True, None]

    j = curves.to_json()
    s = json.dumps(j, allow_nan=False)
    back = json.loads(s)
    assert back["study"] == "demo"
    assert back["families"]["rank1"]["fit"] is None
    assert back["families"]["dense"]["fit"]["ci"]["alpha"][0] < 0.4 + 0.05
    assert len(back["families"]["dense"]["points"]) == 8


def test_curves_plot(curves, tmp_path):
    out = curves.plot(tmp_path / "curves.png")
    data = (tmp_path / "curves.png").read_bytes()
    assert out.endswith("curves.png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_family_seed_is_independent_of_other_families():
    pts = synth_points()
    only = pts.filter(pa.compute.equal(pts.column("family"), "dense"))
    a = Curves.from_points(pts, n_boot=50, seed=3)["dense"].fit.boot
    b = Curves.from_points(only, n_boot=50, seed=3)["dense"].fit.boot
    np.testing.assert_array_equal(a, b)


def test_failed_extrapolation_is_flagged_in_curves():
    pts = synth_points().to_pylist()
    for r in pts:
        if r["family"] == "dense" and r["budget"] >= 4e5:
            r["error"] *= 1.5  # the largest budgets break away from the law
    from dlor_scale.scaling import POINT_SCHEMA

    c = Curves.from_points(pa.Table.from_pylist(pts, schema=POINT_SCHEMA), n_boot=200)
    d = c["dense"]
    assert d.extrapolation["ok"] is False and not d.ok
    assert any(f.startswith("extrapolation check FAILED") for f in d.flags)
    assert c.to_pandas().set_index("family").loc["dense", "extrapolation_ok"] in (False,)


def test_end_to_end_runs_to_curves(tmp_path):
    """dense has 4 budgets: it fits, but holding out 1 leaves 3 points for 3 parameters,
    so the check cannot score an interval and says so (ok=None), rather than passing.
    dlor_deep has a single budget and gets a flagged, NaN curve."""
    rows = []
    rid = 0
    for j, b in enumerate([1000, 4000, 16000, 64000]):
        for t in range(3):
            rid += 1
            err = (0.01 + 3 * b**-0.5) * (1 + 0.02 * t)
            rows.append(_run(rid, "dense", b, "search", "completed", t, 0, err, err))
    rows.append(_run(99, "dlor_deep", 4000, "search", "completed", 0, 0, 0.1, 0.1))
    pts = points_from_runs(pa.Table.from_pylist(rows, schema=RUN_SCHEMA))
    c = Curves.from_points(pts, n_boot=100, study="e2e")
    dense = c["dense"]
    assert dense.fit is not None and dense.fit.n_points == 4
    assert dense.extrapolation["holdout"] == 1 and dense.extrapolation["ok"] is None
    assert any(f.startswith("extrapolation n/a") for f in dense.flags)
    assert dense.extrapolation["max_rel_err"] < 0.01  # the error is still reported
    assert c["dlor_deep"].fit is None
    assert any("only one budget" in f for f in c["dlor_deep"].flags)
    c.plot(tmp_path / "e2e.png")
    assert (tmp_path / "e2e.png").stat().st_size > 10_000


def test_flagged_points_are_excluded_from_the_fit_and_reported():
    """The two largest dense cells stopped short of capacity (error 1.5× the law): fitted,
    they bend the law (E absorbs them and α steepens); flagged and excluded (the default),
    α is the planted 0.4 again."""
    from dlor_scale.scaling import POINT_SCHEMA

    pts = synth_points().to_pylist()
    for r in pts:
        if r["family"] == "dense" and r["budget"] >= 3e5:
            r["error"] *= 1.5
            r["flags"] = "undertrained" if r["budget"] < 9e5 else "undertrained,lr_edge:high"
    table = pa.Table.from_pylist(pts, schema=POINT_SCHEMA)
    c = Curves.from_points(table, n_boot=200)
    d = c["dense"]
    assert d.fit.n_points == 6 and d.points.num_rows == 8  # points keep every budget
    assert d.alpha == pytest.approx(0.4, abs=0.03)
    assert [x["budget"] for x in d.excluded] == [372759, 1000000]
    assert d.excluded[1]["flags"] == "undertrained,lr_edge:high"
    assert any(f.startswith("excluded 2 flagged point(s)") and "lr_edge:high" in f
               for f in d.flags)
    assert c["dlor_deep"].excluded == []
    row = c.to_pandas().set_index("family").loc["dense"]
    assert list(row["excluded_budgets"]) == [372759, 1000000]
    assert "1000000: undertrained,lr_edge:high" in list(row["excluded_reasons"])
    t = c.to_arrow()
    assert t.schema.field("excluded_budgets").type == pa.list_(pa.int64())
    j = json.loads(json.dumps(c.to_json(), allow_nan=False))
    assert [x["budget"] for x in j["families"]["dense"]["excluded"]] == [372759, 1000000]

    inc = Curves.from_points(table, n_boot=200, exclude_flagged=False)["dense"]
    assert inc.fit.n_points == 8 and inc.excluded == []
    assert any(f.startswith("fit INCLUDES 2 flagged point(s)") for f in inc.flags)
    assert abs(inc.alpha - 0.4) > 0.05  # what the flagged cells did to the law


def test_curves_compare_says_not_identified_for_a_flat_family():
    from dlor_scale.scaling import POINT_SCHEMA

    pts = [r for r in synth_points().to_pylist() if r["family"] != "rank1"]
    rng = np.random.default_rng(5)
    for r in pts:
        if r["family"] == "dense":  # stuck on a floor: no scaling to identify
            r["error"] = 0.02 * math.exp(0.05 * rng.standard_normal())
    c = Curves.from_points(pa.Table.from_pylist(pts, schema=POINT_SCHEMA), n_boot=200)
    cmp = c.compare("dlor_deep", "dense")
    assert cmp["identified"] is False and cmp["verdict"] == "not identified"
    assert cmp["delta_alpha_ci"] is None and "dense" in cmp["why"]
    d = c["dense"]
    assert d.extrapolation["ok"] is None and not d.ok
    assert any(f.startswith("extrapolation n/a") for f in d.flags)
    assert c.to_pandas().set_index("family").loc["dense", "alpha_identified"] == False  # noqa: E712
    ok = c.compare("dlor_deep", "dlor_deep")
    assert ok["identified"] is True and ok["verdict"] == "no significant difference"

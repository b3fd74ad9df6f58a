"""Reproduction reports (`dlor_scale.paper.report`): analytic experiments, study sections on
hand-built member tables, MLflow logging, and the paper study specs in studies/paper/."""

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from dlor_scale.paper import report as R

ROOT = Path(__file__).resolve().parents[1]
PAPER_STUDIES = sorted((ROOT / "studies" / "paper").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _low_dpi(monkeypatch):
    """Figures are checked for existence and content, not looks: render them small and fast."""
    monkeypatch.setattr(R, "FIG_DPI", 40)


# ---------------------------------------------------------------- hand-built member tables

def _member(family, budget, *, model_family=None, test_error=math.nan, best_val=None, ett=math.nan,
            state="completed", phase="search", seed=0, confirm_of=None, n_params=None, run_id=None):
    """One row of a `records.member_runs` table (the columns the reports and `curves` read)."""
    return {"run_id": run_id or f"{family}-{budget}-{phase}-{seed}-{confirm_of}", "study": "t",
            "cell": f"{family}@{budget}", "optuna_trial": seed if phase == "search" else None,
            "family": family, "model_family": model_family or family, "budget": budget,
            "n_params_total": n_params or budget, "phase": phase, "state": state, "seed": seed,
            "test_error": test_error, "best_val": test_error if best_val is None else best_val,
            "epochs_to_threshold": ett, "epochs_trained": 5000.0, "confirm_of": confirm_of}


def _table(rows):
    """Arrow, as `records.member_runs` returns it (ints stay ints, NaN floats)."""
    return pa.Table.from_pylist(rows)


def _threshold_rows():
    rows = []
    deep_epochs = [1000, 1200, 1400, 1600, 1800, 2000, 2200, 2400, math.nan, math.nan]
    for s, e in enumerate(deep_epochs):
        rows.append(_member("dlor_deep", 500, ett=e, test_error=5e-4, seed=s))
    for s in range(10):
        rows.append(_member("dlor_wide", 500, ett=4000.0 if s < 2 else math.nan, test_error=2e-3, seed=s))
    for s in range(10):
        rows.append(_member("dense", 500, ett=3000.0 + 100 * s if s < 5 else math.nan, test_error=1e-3, seed=s))
    rows.append(_member("dense", 500, state="failed", seed=99))  # infrastructure failure: not a result
    rows.append(_member("dense", 500, state="diverged", seed=98))  # a real failure to reach the threshold
    rows.append(_member("dense", 500, state="pruned", seed=97))  # censored: excluded
    rows.append(_member("dense", 500, state="pruned", seed=96, ett=3100.0))  # pruned after success: counts
    return rows


def test_threshold_stats_success_rate_ci_and_median():
    st = R.threshold_stats(R.member_frame(_table(_threshold_rows()))).set_index("family")
    deep, wide, dense = st.loc["dlor_deep"], st.loc["dlor_wide"], st.loc["dense"]
    assert (deep.n, deep.successes, deep.rate) == (10, 8, 0.8)
    assert deep.median_epochs == 1700.0 and deep.q25_epochs == 1350.0
    # Clopper–Pearson 95 % for 8/10 (textbook values)
    assert deep.ci_lo == pytest.approx(0.4439, abs=1e-4) and deep.ci_hi == pytest.approx(0.9748, abs=1e-4)
    assert (wide.successes, wide.n, wide.median_epochs) == (2, 10, 4000.0)
    # 10 seeds + diverged + successful pruned; failed and censored-pruned excluded
    assert (dense.n, dense.successes) == (12, 6)
    assert dense.median_epochs == pytest.approx(np.median([3000, 3100, 3200, 3300, 3400, 3100]))
    assert R.clopper_pearson(0, 10) == (0.0, pytest.approx(0.3085, abs=1e-4))
    assert R.clopper_pearson(10, 10)[1] == 1.0


def test_time_to_threshold_section_verdict_and_figure(tmp_path):
    meta = {"metric": "mse", "threshold": 1e-3, "epochs": 5000, "report_every": 10}
    df = R.member_frame(_table(_threshold_rows()))
    sec = R.time_to_threshold_section(df, tmp_path, meta, "ttt")
    # 8/10 vs 2/10: deep better and faster, but the 95 % CIs (0.44–0.97, 0.03–0.56) overlap
    assert [c.passed for c in sec.verdict.checks] == [True, True, False]
    assert sec.verdict.label == "partly reproduced"
    df.loc[df["family"] == "dlor_wide", "epochs_to_threshold"] = math.nan  # wide 0/10: CI 0–0.31
    sec = R.time_to_threshold_section(df, tmp_path, meta, "ttt")
    assert sec.verdict.label == "reproduced", sec.verdict.markdown()
    assert sec.metrics["ttt.dlor_deep.500.success_rate"] == 0.8
    assert sec.metrics["ttt.dlor_deep.500.median_epochs"] == 1700.0
    assert "8/10" in sec.body and "1,700" in sec.body
    assert sec.figures[0].stat().st_size > 2_000


def test_time_to_threshold_verdict_fails_when_wide_is_faster(tmp_path):
    rows = [_member("dlor_deep", 500, ett=math.nan, seed=s) for s in range(10)]
    rows += [_member("dlor_wide", 500, ett=100.0, seed=s) for s in range(10)]
    sec = R.time_to_threshold_section(R.member_frame(_table(rows)), tmp_path, {"threshold": 1e-3}, "x")
    assert sec.verdict.label == "not reproduced"


def _fixed_rows():
    rows = []
    errs = {"dlor_deep": [1e-4, 2e-4, 3e-4], "dlor_wide": [2e-3, 3e-3, 4e-3], "dense": [1.5e-3, 2e-3, 2.5e-3]}
    for budget, scale in ((300, 2.0), (600, 1.0)):
        for fam, es in errs.items():
            for s, e in enumerate(es):
                rows.append(_member(fam, budget, test_error=scale * e, seed=s, n_params=budget + s))
                r = rows[-1]
                r["val_error_at_500"] = 10 * r["test_error"] if fam == "dlor_deep" else 1.5 * r["test_error"]
    return rows


def test_fixed_budget_section_numbers_verdict_and_figure(tmp_path):
    meta = {"metric": "mse", "threshold": 1e-3, "epochs": 5000}
    sec = R.fixed_budget_section(R.member_frame(_table(_fixed_rows())), tmp_path, meta, "fb")
    assert sec.metrics["fixed_budget.dlor_deep.600.median"] == pytest.approx(2e-4)
    assert sec.metrics["fixed_budget.dlor_deep.300.median"] == pytest.approx(4e-4)
    assert sec.metrics["fixed_budget.dense.600.median"] == pytest.approx(2e-3)
    assert sec.verdict.label == "reproduced", sec.verdict.markdown()
    assert "val @ 500 ep" in sec.body and "test @ 5,000 ep" in sec.body
    assert sec.figures[0].name == "fb_fixed_budget.png" and sec.figures[0].stat().st_size > 2_000


def test_final_rows_prefers_confirmation_seeds_of_the_best_config():
    rows = [_member("dense", 100, test_error=9.0, seed=s) for s in range(3)]  # search: ignored
    rows += [_member("dense", 100, phase="confirm", confirm_of=7, test_error=e, best_val=e, seed=s)
             for s, e in enumerate([1.0, 2.0, 3.0])]
    rows += [_member("dense", 100, phase="confirm", confirm_of=4, test_error=e, best_val=e, seed=s)
             for s, e in enumerate([0.5, 0.6, 10.0])]
    st = R.cell_stats(R.final_rows(R.member_frame(_table(rows))))
    row = st.iloc[0]
    assert (row["n"], row["median"], row["min"], row["best"]) == (3, 0.6, 0.5, 0.5)  # config 4 wins (median val 0.6)


def _rank1_rows(deep_at_smallest):
    floor = R.X1X2_FLOOR_RMS ** 2
    rows = []
    for b, deep in ((200, deep_at_smallest), (800, 5e-4), (3200, 1e-4)):
        rows += [_member("rank1", b, test_error=floor * f, seed=s) for s, f in enumerate((1.01, 1.02, 1.05))]
        rows += [_member("dlor_deep", b, test_error=deep * f, seed=s) for s, f in enumerate((1.0, 1.2, 1.4))]
    return R.member_frame(_table(rows))


def test_rank1_floor_section_uses_the_analytic_floor(tmp_path):
    meta = {"metric": "mse", "target": {"kind": "nonridge", "function": "product", "d_in": 2}}
    assert R.analytic_floor(meta) == pytest.approx(4 / 135)
    assert R.analytic_floor({**meta, "metric": "rmse"}) == pytest.approx(0.17213, abs=1e-5)
    assert R.analytic_floor({**meta, "target": {"kind": "nonridge", "d_in": 3}}) is None
    sec = R.rank1_floor_section(_rank1_rows(1e-3), tmp_path, meta, "r1")
    assert sec.verdict.label == "reproduced", sec.verdict.markdown()
    assert sec.metrics["rank1_floor.analytic"] == pytest.approx(4 / 135)
    assert "P=200: 25×" in sec.verdict.markdown() and "1.20e-03 → 1.20e-04" in sec.body
    # deep only 8× below rank-1 at the smallest budget: that check fails, the rest hold
    sec = R.rank1_floor_section(_rank1_rows(3e-3), tmp_path, meta, "r1")
    assert [c.passed for c in sec.verdict.checks] == [True, True, False, True]


def test_generalization_and_scaling_sections(tmp_path):
    rows = []
    budgets = (300, 1000, 3000, 10000, 30000)
    for b in budgets:
        for s in range(3):
            noise = 1 + 0.05 * s
            rows.append(_member("dlor_deep", b, test_error=noise * (1e-4 + 3.0 * b ** -1.0), seed=s))
            rows.append(_member("dlor_wide", b, test_error=noise * (1e-4 + 0.3 * b ** -0.5), seed=s))
            rows.append(_member("dense", b, test_error=noise * (1e-4 + 0.5 * b ** -0.6), seed=s))
    df = R.member_frame(_table(rows))
    meta = {"metric": "mse", "target": {"kind": "teacher", "n_train": 256}}
    gen = R.generalization_section(df, tmp_path, meta, "g")
    assert gen.verdict.label == "reproduced", gen.verdict.markdown()
    assert "| 30000 | 0.18 | 1.62 |" in gen.body  # deep / dense, wide / dense at the largest budget
    gap = R.generalization_section(df.assign(train_loss_final=df["test_error"] / 4), tmp_path, meta, "g")
    assert "Generalisation gap" in gap.body and "| 4.00 |" in gap.body
    sc = R.scaling_section(df, tmp_path, {"metric": "mse"}, "s", n_boot=20)
    assert "dlor_scale.curves" in sc.body and "fell back" not in sc.body
    assert sc.figures[0].exists()
    assert sc.metrics["scaling.delta_alpha"] == pytest.approx(0.5, abs=0.1)  # α_deep ≈ 1 vs α_wide ≈ 0.5
    assert sc.verdict.checks[0].passed and sc.verdict.checks[2].passed
    # a table curves cannot read (no optuna_trial) falls back to fit.fit_law, same answer
    fb = R.scaling_section(df.drop(columns=["optuna_trial"]), tmp_path, {"metric": "mse"}, "s2", n_boot=20)
    assert "fell back" in fb.body and fb.metrics["scaling.delta_alpha"] == pytest.approx(0.5, abs=0.1)
    assert (tmp_path / "s2_scaling.png").exists()


def test_verdict_rule():
    ok, bad, na = R.Check("a", True), R.Check("b", False), R.Check("c", None)
    assert R.verdict([ok, ok]).label == "reproduced"
    assert R.verdict([ok, bad]).label == "partly reproduced"
    assert R.verdict([ok, na]).label == "partly reproduced"  # not everything could be checked
    assert R.verdict([bad, bad]).label == "not reproduced"
    assert R.verdict([na]).label == "inconclusive"


def test_study_kind_and_empty_study(tmp_path):
    assert R.study_kind("fixed_budget_laptop") == "fixed_budget"
    assert R.study_kind("rank1_nonridge") == "rank1_nonridge"
    assert R.study_kind("quickstart") is None
    from dlor_scale.errors import DlorError
    with pytest.raises(DlorError, match="no member runs"):
        R.study_sections(R.member_frame(_table([_member("dense", 1)]))[:0], tmp_path, {}, "fixed_budget")


# ---------------------------------------------------------------- analytic reports

def test_reconstruction_section_is_exact(tmp_path):
    sec = R.reconstruction_section(tmp_path, ns=(4, 16, 64))
    errs = {k: v for k, v in sec.metrics.items() if k.endswith("rel_error")}
    assert len(errs) == 12 and max(errs.values()) <= 1e-10
    assert sec.metrics["recon.n64.additive.params"] == 2 * 64 * 64
    assert sec.metrics["recon.n64.multiplicative.params"] == 126 * 129 + 64  # 2n−2 reflectors + diag(d)
    assert sec.verdict.label == "reproduced"
    md = sec.markdown(tmp_path)
    assert "![reconstruction](reconstruction.png)" in md and "| 64 | wide: rank-1 sum, no diagonal | 64 |" in md
    assert (tmp_path / "reconstruction.png").stat().st_size > 2_000


def test_construction_slopes_are_one_and_relu_exact(tmp_path):
    hs = tuple(float(h) for h in np.logspace(-2, -4, 3))
    sec = R.construction_section(tmp_path, hs=hs, activations=("tanh", "relu"))
    slopes = {k: v for k, v in sec.metrics.items() if k.endswith(".slope")}
    smooth = [v for k, v in slopes.items() if ".tanh." in k]
    assert len(smooth) == 4 and all(abs(s - 1) <= 0.1 for s in smooth)
    assert all(math.isnan(v) for k, v in slopes.items() if ".relu." in k)  # exact: no slope
    assert sec.verdict.label == "reproduced", sec.verdict.markdown()
    assert {p.name for p in sec.figures} == {"construction_mlp.png", "construction_sawtooth.png"}


def test_rank1_report_floor_and_interpolation(tmp_path):
    sec = R.rank1_section(tmp_path, ns=(16, 64), widths=(1, 4, 16, 64), pieces=(4, 16, 64))
    assert sec.metrics["rank1.floor_rms"] == pytest.approx(math.sqrt(4 / 135), rel=1e-6)
    assert max(v for k, v in sec.metrics.items() if k.startswith("rank1.interp")) <= 1e-10
    assert sec.metrics["rank1.dense_pwl.P513.rms"] < 1e-3  # 64 pieces: far below the 0.172 floor
    assert sec.verdict.label == "reproduced", sec.verdict.markdown()


def test_pwl_product_error_falls_like_p_minus_two():
    a, b = R._pwl_product(8), R._pwl_product(16)
    assert b["params"] == 8 * 16 + 1
    assert a["rms"] / b["rms"] == pytest.approx(4.0, rel=0.05)  # δ² scaling
    assert b["sup"] <= 2 / 16 ** 2  # interpolation bound δ²/8 with δ = 4/m


def _record_fake_study(tr):
    """A study recorded the way the launcher records it (study run + member runs), no training."""
    study = tr.get_or_create_run("fixed_budget_laptop", name="fixed_budget_laptop", kind="study")
    tr.log_batch(study, params={"metric": "mse", "threshold": 0.001, "epochs": 5000, "report_every": 50,
                                "target": '{"kind": "sawtooth", "d_in": 1, "teeth": 4}'})
    for i, r in enumerate(_fixed_rows()):
        if r["seed"] != 0:
            continue  # one seed per cell keeps this test quick (every MLflow write is a query)
        curve = [(k, 10 * r["test_error"] * (1 if k <= 10 else 0.1)) for k in range(1, 101)]  # report indices
        tr.record_run(f"fixed_budget_laptop/m{i}", name=f"m{i}", kind="member", parent_id=study,
                      params={"n_params_total": r["n_params_total"], "seed": r["seed"]},
                      tags={"state": "completed", "dlor.study": "fixed_budget_laptop", "dlor.cell": r["cell"],
                            "dlor.family": r["family"], "dlor.label": r["family"], "dlor.budget": r["budget"],
                            "dlor.phase": "search"},
                      curves={"val_error": curve},
                      finals={"test_error": r["test_error"], "best_val": r["test_error"], "epochs_trained": 5000})


def test_make_report_writes_markdown_and_logs_report_runs(tmp_path):
    """One SQLite store for both paths (creating one costs seconds): analytic → paper-analytic,
    study → the study's own experiment, each a kind=report run with the summary and figures."""
    from mlflow.tracking import MlflowClient

    from dlor_scale.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    md = R.make_report("reconstruction", tmp_path / "out", uri)
    assert md == tmp_path / "out" / "reconstruction.md"
    assert "**Verdict: reproduced**" in md.read_text()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(R.ANALYTIC_EXPERIMENT)
    assert exp.artifact_location.startswith((tmp_path / "artifacts").as_uri())
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["kind"] == "report" and run.data.tags["verdict.reconstruction"] == "reproduced"
    assert run.data.metrics["recon.n4.additive.rel_error"] <= 1e-10
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert names == {"report/reconstruction.md", "report/reconstruction.png"}

    tr = Tracker(uri, "fixed_budget_laptop")
    _record_fake_study(tr)
    md = R.make_report("fixed_budget_laptop", tmp_path / "out", uri)
    text = md.read_text()
    # the 500-epoch error comes from the curve (report index 10 × 50 epochs): 10× the final one
    assert "val @ 500 ep" in text and "| val @ 500 ep | dlor_deep | 600 | 600 | 1/1 | 1.00e-03 |" in text
    assert (tmp_path / "out" / "fixed_budget_laptop_fixed_budget.png").exists()
    (rep,) = tr.runs(kind="report")
    assert rep.data.tags["verdict.fixed_budget"] == "reproduced"


def test_checkpoint_reads_report_indices_and_epochs():
    assert R._step_scale([(1, 0.0), (100, 0.0)], 5000.0, 50) == 50  # report indices
    assert R._step_scale([(50, 0.0), (5000, 0.0)], 5000.0, 50) == 1  # epochs
    assert R._step_scale([(1, 0.0), (10, 0.0)], 10.0, 1) == 1


# ---------------------------------------------------------------- the paper's study specs

def test_paper_studies_exist_in_pairs():
    names = {p.stem for p in PAPER_STUDIES}
    for kind in R.STUDY_KINDS:
        assert kind in names and f"{kind}_laptop" in names, kind


@pytest.mark.parametrize("path", PAPER_STUDIES, ids=lambda p: p.stem)
def test_paper_study_validates_and_every_cell_solves(path):
    from dlor_scale.plan import make_plan
    from dlor_scale.spec import load_study

    study = load_study(path)
    plan = make_plan(study)  # raises if any (family, budget) cell has no shape
    assert study.name == path.stem and R.study_kind(study.name) in R.STUDY_KINDS
    assert all(c.shapes for c in plan.cells)
    assert study.pruner.kind == "none" or R.study_kind(study.name) == "scaling"
    if R.study_kind(study.name) == "time_to_threshold":
        per_config = study.trials_per_cell if study.confirm is None else study.confirm.seeds
        assert per_config >= 10 and study.threshold == 1e-3
        # seeds of ONE configuration: fixed hyperparameters, or the confirmation of the best
        assert all(isinstance(v, float) for v in study.search_space.values()) or study.confirm is not None
    if study.name.endswith("_laptop"):
        assert study.device == "cpu" and study.resources.gpu == 0

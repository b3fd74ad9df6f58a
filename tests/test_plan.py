"""The execution plan: every cell solved, trials shared out, the table the CLI prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dlor_scale.budget import GROWTH_AXIS, fixed_axes
from dlor_scale.models import count_params
from dlor_scale.plan import Cell, Plan, make_plan, split_trials, study_slots
from dlor_scale.sizing import CPU_SLOTS, cohort_slots
from dlor_scale.spec import load_study, parse_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"
ROW_KEYS = {"cell", "family", "budget", "shape", "width", "depth", "rank", "branches", "diag",
            "n_params", "rel_err", "trials", "parts", "slots", "cpu", "gpu"}


@pytest.fixture(scope="module")
def quickstart():
    return load_study(STUDIES / "quickstart.yaml")


@pytest.fixture(scope="module")
def qs_plan(quickstart) -> Plan:
    return make_plan(quickstart)


def quickstart_with(**changes):
    data = yaml.safe_load((STUDIES / "quickstart.yaml").read_text())
    data.update(changes)
    return parse_study(data, "quickstart.yaml")


def test_cells_are_families_times_budgets(quickstart, qs_plan):
    keys = [c.key for c in qs_plan.cells]
    assert keys == [f"{label}@{b}" for label in quickstart.families for b in quickstart.budgets]
    assert (qs_plan.d_in, qs_plan.d_out) == (quickstart.target.d_in, 1)
    c = qs_plan.cells[0]
    assert c.optuna_study_name("quickstart") == f"quickstart/{c.label}@{c.budget}"
    assert qs_plan.cell(c.key) is c
    with pytest.raises(KeyError, match="no cell"):
        qs_plan.cell("nope@1")


def test_every_shape_is_within_tolerance_and_counted_exactly(quickstart, qs_plan):
    for cell in qs_plan.cells:
        assert cell.shapes, cell.key
        for sp in cell.shapes:
            assert sp.shape.family == cell.family
            assert (sp.shape.d_in, sp.shape.d_out, sp.shape.activation) == (
                quickstart.target.d_in, 1, quickstart.activation)
            assert sp.counts == count_params(sp.shape) and sp.n_params == sp.counts.total
            assert abs(sp.n_params - cell.budget) <= quickstart.tolerance * cell.budget


def test_trials_and_slots(quickstart, qs_plan):
    for cell in qs_plan.cells:
        assert cell.trials == sum(sp.trials for sp in cell.shapes) == quickstart.trials_per_cell
        for sp in cell.shapes:
            assert sp.slots == sp.cohort_size == min(quickstart.cohort_size, sp.trials)
    assert qs_plan.total_members == len(qs_plan.cells) * quickstart.trials_per_cell
    assert qs_plan.total_trials == len(qs_plan.cells)  # one shape per cell
    conf = quickstart.confirm
    assert qs_plan.confirm_members == len(qs_plan.cells) * conf.top_k * conf.seeds


def test_quickstart_is_small(qs_plan):
    """Sized for 2 CPU cores in a few minutes: few members, small networks."""
    assert 150 <= qs_plan.total_members + qs_plan.confirm_members <= 400
    assert all(sp.n_params <= 2550 and sp.shape.width <= 256 and sp.shape.depth <= 128
               for c in qs_plan.cells for sp in c.shapes)


SHIPPED = ["budget", *(f"paper/{p.stem}" for p in sorted((STUDIES / "paper").glob("*.yaml")))]


@pytest.mark.parametrize("name", ["quickstart", *SHIPPED])
def test_shipped_studies_plan_only_trainable_shapes(name):
    """Every planned cell keeps the rules (depth ≤ max_depth, branches·rank ≤ width) and
    no family's fixed axes change unplanned: the dry run has no warning."""
    study = load_study(STUDIES / f"{name}.yaml")
    plan = make_plan(study)
    assert plan.warnings == ()
    for c in plan.cells:
        rules = study.solve_kwargs(c.label)["rules"]
        assert all(rules.ok(sp.shape) for sp in c.shapes), c.key


def test_budget_study_grows_dlor_depth_and_branches_then_width():
    """The headline study: dense/lowrank one structure each; the DLoR families grow their
    own axis at one width until it runs out, then width (a note each, not a warning)."""
    plan = make_plan(load_study(STUDIES / "budget.yaml"))
    assert plan.study.policy == "axis" and plan.warnings == ()
    assert [n.split(":", 1)[0] for n in plan.notes] == ["families.dlor_deep", "families.dlor_wide"]
    for label in ("dense", "lowrank"):
        cells = [c.shapes[0].shape for c in plan.cells if c.label == label]
        fam = plan.study.families[label].family
        assert len({tuple(getattr(s, a) for a in fixed_axes(fam)) for s in cells}) == 1
        growth = [getattr(s, GROWTH_AXIS[fam]) for s in cells]
        assert growth == sorted(growth)
    for label, axis in (("dlor_deep", "depth"), ("dlor_wide", "branches")):
        shapes = [c.shapes[0].shape for c in plan.cells if c.label == label]
        grown = [getattr(s, axis) for s in shapes]
        widths = [s.width for s in shapes]
        assert grown == sorted(grown) and widths == sorted(widths), label
        # first the family's own axis grows at one width, then only width grows
        k = widths.count(widths[0])
        assert 1 < k < len(shapes), (label, widths)
        assert len(set(grown[:k])) == k and len(set(grown[k:])) == 1, (label, grown)
        assert len(set(widths[k - 1:])) == len(shapes) - k + 1, (label, widths)


def _forced_study(tmp_path, families, budgets, strict=False):
    data = yaml.safe_load((STUDIES / "quickstart.yaml").read_text())
    data.update(families=families, budgets=budgets, strict=strict, sampler={"kind": "random"},
                output_dir=str(tmp_path / "runs"), tolerance=0.02,
                target={"kind": "teacher", "d_in": 4, "widths": [32, 32], "seed": 0})
    path = tmp_path / ("strict.yaml" if strict else "forced.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("families, budget, cell, reason", [
    # d_in 4: dlor_deep at width 8 has 49 + 25·L parameters, so 1549 forces depth 60
    ({"dlor_deep": {"width": 8, "depth": {"min": 1, "max": 128}, "rank": 1, "diag": "scalar"}},
     1549, "dlor_deep@1549", "depth 60 > max_depth"),
    # dlor_wide at width 8 has 58 + 16·K parameters, so 250 forces 12 branches
    ({"dlor_wide": {"width": 8, "depth": 1, "rank": 1, "branches": {"min": 1, "max": 64}, "diag": "scalar"}},
     250, "dlor_wide@250", "branches·rank 12·1 = 12 > width 8"),
    # d_in 4: dlor_deep held at width 4 (= d_in) grows depth that cannot make it universal
    ({"dlor_deep": {"width": 4, "depth": {"min": 1, "max": 40}, "rank": 1, "diag": "scalar"}},
     337, "dlor_deep@337", "width 4 ≤ d_in 4"),
])
def test_validate_and_dry_run_warn_and_strict_refuses(tmp_path, families, budget, cell, reason):
    """The planner warns for a cell the spec's ranges force past a rule, naming the cell,
    the reason and the fix; ``strict: true`` makes it an error (exit 2)."""
    from typer.testing import CliRunner

    from dlor_scale.cli import app
    path = _forced_study(tmp_path, families, [budget])
    for args in (["validate", str(path)], ["launch", str(path), "--dry-run"]):
        res = CliRunner().invoke(app, args)
        text = " ".join(res.output.split())
        assert res.exit_code == 0, res.output
        assert f"warning: cell {cell} (" in text and reason in text and "fix: " in text
        assert "families.dlor_" in text.split("fix: ", 1)[1]
    strict = _forced_study(tmp_path, families, [budget], strict=True)
    for args in (["validate", str(strict)], ["launch", str(strict), "--dry-run"]):
        res = CliRunner().invoke(app, args)
        text = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert f"strict: cell {cell} (" in text and reason in text
    assert not (tmp_path / "runs").exists()


def test_table_rows(quickstart, qs_plan):
    rows = qs_plan.table()
    assert len(rows) == qs_plan.total_trials
    for row, (cell, sp) in zip(rows, ((c, sp) for c in qs_plan.cells for sp in c.shapes)):
        assert set(row) == ROW_KEYS
        assert row["cell"] == cell.key and row["shape"] == sp.shape.label()
        assert row["n_params"] == sp.n_params and row["trials"] == sp.trials and row["slots"] == sp.slots
        assert row["rel_err"] == pytest.approx((sp.n_params - cell.budget) / cell.budget, abs=1e-6)
        assert abs(row["rel_err"]) <= quickstart.tolerance
        assert (row["cpu"], row["gpu"]) == (quickstart.resources.cpu, quickstart.resources.gpu)


def test_several_shapes_share_a_cell_unevenly_first_first():
    s = quickstart_with(shapes_per_cell=3, policy="closest")
    plan = make_plan(s)
    sizes = []
    for cell in plan.cells:
        n = len(cell.shapes)  # fewer than 3 when fewer shapes fit the budget
        sizes.append(n)
        assert 1 <= n <= 3 and len({sp.shape for sp in cell.shapes}) == n
        assert [sp.trials for sp in cell.shapes] == {1: [8], 2: [4, 4], 3: [3, 3, 2]}[n]
        errs = [round(abs(sp.n_params - cell.budget) / cell.budget, 6) for sp in cell.shapes]
        assert errs == sorted(errs)  # policy closest: best shape first
    assert 3 in sizes
    assert plan.total_trials == sum(sizes)
    assert plan.total_members == 8 * len(plan.cells)


def test_plan_is_deterministic(quickstart, qs_plan):
    assert make_plan(quickstart) == qs_plan


def test_budget_study_plan_uses_auto_cohorts():
    s = load_study(STUDIES / "budget.yaml")
    plan = make_plan(s)
    assert len(plan.cells) == len(s.families) * len(s.budgets)
    # gpu 0.25 per trial: auto sizes each cohort from the worker's free GPU memory, which a
    # plan made on this CPU-only machine cannot know — it says so instead of guessing
    assert all(sp.slots is None for c in plan.cells for sp in c.shapes)
    assert all(r["slots"] == "auto (GPU)" for r in plan.table())
    assert all(r["gpu"] == 0.25 for r in plan.table())


@pytest.mark.parametrize("total, parts, expected", [
    (8, 1, [8]), (8, 3, [3, 3, 2]), (10, 4, [3, 3, 2, 2]), (3, 3, [1, 1, 1]), (64, 5, [13, 13, 13, 13, 12]),
])
def test_split_trials(total, parts, expected):
    assert split_trials(total, parts) == expected and sum(expected) == total


@pytest.mark.parametrize("cohort, trials, slots", [(16, 8, 8), (4, 8, 4), ("auto", 8, 8), ("auto", 500, CPU_SLOTS)])
def test_cohort_slots(quickstart, cohort, trials, slots):
    shape = make_plan(quickstart).cells[0].shapes[0].shape
    assert cohort_slots(cohort, shape, trials=trials, n_train=1024, batch_size=None, device="cpu") == slots


def test_cohort_slots_auto_is_bounded_by_memory(quickstart):
    shape = make_plan(quickstart).cells[0].shapes[0].shape
    one = cohort_slots("auto", shape, trials=500, n_train=1024, batch_size=None, device="cpu",
                       free_bytes=10**9)
    tight = cohort_slots("auto", shape, trials=500, n_train=1024, batch_size=None, device="cpu",
                         free_bytes=2 * 10**5)
    assert one == CPU_SLOTS and 1 <= tight < one


def test_dry_run_with_auto_cohorts_shows_the_slots_the_worker_uses(tmp_path):
    """One owner for cohort size: the plan (what --dry-run prints) and the worker call the
    same rule; the worker's input is the data it actually made."""
    from dlor_scale.worker import dataset_for
    study = quickstart_with(cohort_size="auto", device="cpu", trials_per_cell=100)
    plan = make_plan(study)
    data = dataset_for(study, tmp_path)
    for cell in plan.cells[:3]:
        sp = cell.shapes[0]
        worker = study_slots(study, sp.shape, sp.trials, n_train=len(data.x_train))
        assert sp.slots == worker and isinstance(worker, int), (cell.key, sp.slots, worker)
    assert {r["slots"] for r in plan.table()} == {min(100, CPU_SLOTS)}


def test_cell_key_format():
    cell = Cell("deep_full", "dlor_deep", 3000, ())
    assert cell.key == "deep_full@3000" and cell.trials == 0
    assert cell.optuna_study_name("budget") == "budget/deep_full@3000"

"""Split cells (``parts_per_cell``): the plan's parts, the spec's guards, and the promise
that makes splitting safe: a part samples, prunes and seeds exactly as it would alone,
whatever order (or interleaving) Ray runs the parts in."""

from __future__ import annotations

import copy

import optuna
import pytest
import yaml

from dlor_scale import plan as planmod
from dlor_scale.pruners import LockstepHalvingPruner
from dlor_scale.samplers import SEQ_ATTR, ScopedSampler, make_sampler
from dlor_scale.search import OptunaSource, member_seed
from dlor_scale.spec import parse_study
from dlor_scale.tune import search_unit_id, search_units, unit_shape_index
from lockstep import lockstep_rounds, run_lockstep
from test_search import SPACE

#: The study_overhead benchmark's large-member study: one cell (dlor_deep@1200, 48
#: layers) costs over four times the mean cell.
SPEC = {
    "name": "parts", "target": {"kind": "teacher", "d_in": 4, "widths": [16], "n_train": 256, "seed": 0},
    "budgets": [150, 300, 600, 1200], "tolerance": 0.05, "policy": "axis",
    "families": {"dense": {"width": {"min": 2, "max": 64}, "depth": 1},
                 "dlor_deep": {"width": 8, "rank": 1, "depth": {"min": 1, "max": 64}, "diag": "scalar"}},
    "search_space": {"lr": {"type": "float", "low": 3e-3, "high": 0.1, "log": True}},
    "pruner": {"kind": "median", "n_startup_trials": 4, "n_warmup_steps": 400},
    "trials_per_cell": 32, "cohort_size": 16, "epochs": 2000, "report_every": 50,
}


def study(**over):
    return parse_study({**copy.deepcopy(SPEC), **over}, "<test>")


# ----------------------------------------------------------------------------- the plan


def test_auto_splits_only_the_cell_that_dominates_and_keeps_each_part_a_search():
    plan = planmod.make_plan(study(parts_per_cell="auto"))
    mean = sum(c.cost for c in plan.cells) / len(plan.cells)
    parts = {c.key: c.parts for c in plan.cells}
    # 3.6× and 1.8× the mean (46 and 22 layers); 32 trials leave room for 2 parts of 16
    assert parts == {**{c.key: 1 for c in plan.cells}, "dlor_deep@600": 2, "dlor_deep@1200": 2}
    assert all((c.parts > 1) == (c.cost > mean) for c in plan.cells)
    deep = plan.cell("dlor_deep@1200")
    assert deep.part_trials(deep.shapes[0]) == [16, 16] and deep.part_slots(deep.shapes[0]) == 8
    assert plan.total_trials == len(plan.cells) + 2 and plan.total_members == 8 * 32


def test_parts_never_go_below_a_searchable_size():
    small = planmod.make_plan(study(parts_per_cell="auto", trials_per_cell=24))
    assert all(c.parts == 1 for c in small.cells)   # 24 trials: no room for two parts of 16
    narrow = planmod.make_plan(study(parts_per_cell="auto", trials_per_cell=64, cohort_size=6))
    assert all(c.parts == 1 for c in narrow.cells)  # 6 slots: no room for two parts of ≥ 4


def test_default_plan_is_unsplit_and_units_keep_their_ids():
    s = study()
    units = search_units(s, planmod.make_plan(s))
    assert len(units) == 8 and all(u["scope"] is None for u in units)
    assert sorted(u["id"] for u in units)[0] == "search/dense@1200/0"
    assert all(u["quota"] == 32 and u["slots"] == 16 for u in units)


def test_split_units_share_out_trials_and_slots_and_name_their_part():
    s = study(parts_per_cell=2)
    plan = planmod.make_plan(s)
    units = search_units(s, plan)
    assert len(units) == 16 == plan.total_trials
    for cell in plan.cells:
        mine = [u for u in units if u["cell"] == cell.key]
        ids = [search_unit_id(cell, 0, p) for p in (0, 1)]
        assert sorted(u["id"] for u in mine) == ids == [f"search/{cell.key}/0/p0", f"search/{cell.key}/0/p1"]
        assert sum(u["quota"] for u in mine) == 32 and sum(u["slots"] for u in mine) == 16
        assert all(u["scope"] == [u["id"]] for u in mine)   # one shape: a part is one unit
        assert all(u["optuna_study"] == cell.optuna_study_name(s.name) for u in mine)
        assert [unit_shape_index(i, cell.key) for i in ids] == [0, 0]


def test_dry_run_shows_parts(tmp_path):
    from typer.testing import CliRunner

    from dlor_scale.cli import app
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "parts_per_cell": "auto", "output_dir": str(tmp_path / "runs")}))
    res = CliRunner().invoke(app, ["launch", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "parts" in res.output and "10 cohort units" in " ".join(res.output.split())
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("over, says", [
    ({"sampler": {"kind": "qmc"}}, "sampler qmc keeps one sequence per Optuna study"),
    ({"pruner": {"kind": "wilcoxon"}}, "pruner wilcoxon compares with the cell's best trial"),
    ({"parts_per_cell": 40}, "× shapes_per_cell must be ≤ trials_per_cell (32)"),
])
def test_spec_refuses_parts_that_would_couple_or_starve(over, says):
    from dlor_scale.errors import SpecError
    with pytest.raises(SpecError) as e:
        study(**{"parts_per_cell": 2, **over})
    assert "parts_per_cell" in str(e.value) and says in " ".join(str(e.value).split())


# ----------------------------------------------------------------------------- determinism


UNITS = ["search/c@1/0/p0", "search/c@1/0/p1"]


def _sources(storage, scoped=True):
    """One Optuna study (the cell's), one source per part, each with its own seeded TPE."""
    pruner = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=40, report_every=10)
    out = {}
    for unit in UNITS:
        cfg = type("C", (), {"kind": "tpe", "n_startup_trials": "auto", "multivariate": True,
                             "constant_liar": True})()
        sampler = make_sampler(cfg, seed=member_seed(0, unit, 0), slots=4)
        st = optuna.load_study(study_name="cell", storage=storage,
                               sampler=ScopedSampler(sampler, [unit]) if scoped else sampler, pruner=pruner)
        out[unit] = OptunaSource(st, unit=unit, cell_key="c@1", space=SPACE, quota=12, base_seed=0,
                                 final_epoch=40, scope=[unit] if scoped else None)
    return out


def _run(order, scoped=True):
    """Run both parts in ``order`` ("p0p1", "p1p0" or "mix": a round of each in turn) and
    return what each part did: (unit, place in unit) → (lr, member seed, state)."""
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="cell", storage=storage, direction="minimize")
    src = _sources(storage, scoped)
    seeds = {}
    for s in src.values():   # record every member's seed as it is handed out
        s.next_member = (lambda f: lambda: (lambda m: (m is not None and seeds.setdefault(m.key, m.seed), m)[1])(f()))(s.next_member)
    kw = {"slots": 4, "epochs": 40, "report_every": 10}
    if order == "mix":
        gens = [lockstep_rounds(src[u], **kw) for u in UNITS]
        while gens:
            for g in list(gens):
                try:
                    next(g)
                except StopIteration:
                    gens.remove(g)
    else:
        for u in (UNITS if order == "p0p1" else UNITS[::-1]):
            run_lockstep(src[u], **kw)
    trials = optuna.load_study(study_name="cell", storage=storage).get_trials()
    place = {}
    for t in trials:
        unit = t.user_attrs["unit"]
        n = t.user_attrs.get(SEQ_ATTR, sum(x.user_attrs["unit"] == unit and x.number < t.number for x in trials))
        place[(unit, n)] = (round(t.params["lr"], 12), seeds[f"c@1/t{t.number}"], t.state.name)
    return place


def test_a_part_searches_the_same_whatever_order_the_parts_run_in():
    a, b, mixed = _run("p0p1"), _run("p1p0"), _run("mix")
    assert len(a) == 24 and a == b == mixed
    assert {s for _, _, s in a.values()} >= {"COMPLETE", "PRUNED"}   # the pruner did judge
    # TPE learned within each part: later asks are not the startup's random draws repeated
    assert len({lr for (_, n), (lr, _, _) in a.items() if n >= 4}) == 16


def test_without_scopes_the_order_leaks_into_the_search():
    """The negative control: one shared sampler and pruner history → order-dependent."""
    a, mixed = _run("p0p1", scoped=False), _run("mix", scoped=False)
    assert a != mixed

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

SPEC = {
    "name": "parts", "target": {"kind": "teacher", "d_in": 4, "widths": [16], "n_train": 256, "seed": 0},
    "budgets": [150, 1200], "tolerance": 0.05, "policy": "axis",
    "families": {"dense": {"width": {"min": 2, "max": 64}, "depth": 1},
                 "dlor_deep": {"width": 8, "rank": 1, "depth": {"min": 1, "max": 64}, "diag": "scalar"}},
    "search_space": {"lr": {"type": "float", "low": 3e-3, "high": 0.1, "log": True}},
    "pruner": {"kind": "median", "n_startup_trials": 4, "n_warmup_steps": 400},
    "trials_per_cell": 64, "cohort_size": 16, "epochs": 2000, "report_every": 50,
}


def study(**over):
    return parse_study({**copy.deepcopy(SPEC), **over}, "<test>")


# ----------------------------------------------------------------------------- the plan


def test_default_plan_is_unsplit_and_units_keep_their_ids():
    s = study()
    units = search_units(s, planmod.make_plan(s))
    assert len(units) == 4 and all(u["scope"] is None for u in units)
    assert sorted(u["id"] for u in units)[0] == "search/dense@1200/0"
    assert all(u["quota"] == 64 and u["slots"] == 16 for u in units)


def test_split_units_share_out_trials_keep_full_cohorts_and_name_their_part():
    s = study(parts_per_cell=2)
    plan = planmod.make_plan(s)
    units = search_units(s, plan)
    assert len(units) == 8 == plan.total_trials and plan.total_members == 4 * 64
    for cell in plan.cells:
        mine = [u for u in units if u["cell"] == cell.key]
        ids = [search_unit_id(cell, 0, p) for p in (0, 1)]
        assert sorted(u["id"] for u in mine) == ids == [f"search/{cell.key}/0/p0", f"search/{cell.key}/0/p1"]
        assert [u["quota"] for u in mine] == [32, 32] and [u["slots"] for u in mine] == [16, 16]
        assert all(u["scope"] == [u["id"]] for u in mine)   # one shape: a part is one unit
        assert all(u["optuna_study"] == cell.optuna_study_name(s.name) for u in mine)
        assert [unit_shape_index(i, cell.key) for i in ids] == [0, 0]


def test_dry_run_shows_parts(tmp_path):
    from typer.testing import CliRunner

    from dlor_scale.cli import app
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "parts_per_cell": 4, "output_dir": str(tmp_path / "runs")}))
    res = CliRunner().invoke(app, ["launch", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "parts" in res.output and "16 cohort units, 256 members" in " ".join(res.output.split())
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("over, says", [
    ({"sampler": {"kind": "qmc"}}, "sampler qmc keeps one sequence per Optuna study"),
    ({"pruner": {"kind": "wilcoxon"}}, "pruner wilcoxon compares with the cell's best trial"),
    ({"parts_per_cell": 80}, "× shapes_per_cell must be ≤ trials_per_cell (64)"),
    ({"parts_per_cell": "auto"}, "integer"),
    ({"parts_per_cell": 10**9}, "less than or equal to 256"),   # no plan of a billion units
])
def test_spec_refuses_parts_that_would_couple_or_starve(over, says):
    from dlor_scale.errors import SpecError
    with pytest.raises(SpecError) as e:
        study(**{"parts_per_cell": 2, **over})
    assert "parts_per_cell" in str(e.value) and says in " ".join(str(e.value).split())


def test_a_part_of_one_wave_is_warned_like_a_cohort_of_one_wave():
    from dlor_scale.spec.checks import search_warnings
    assert not search_warnings(study(parts_per_cell=2))   # 32 trials a part over 16 slots: refills learn
    warned = search_warnings(study(parts_per_cell=4))     # 16 a part: one wave, TPE never learns
    assert any(w.startswith("trials_per_cell: all 16 trials of a cohort are asked in one wave") for w in warned)


# ----------------------------------------------------------------------------- determinism


UNITS = ["search/c@1/0/p0", "search/c@1/0/p1"]


def _sources(storage, scoped=True, sampler="tpe", units=UNITS):
    """One Optuna study (the cell's), one source per part, each with its own seeded sampler."""
    pruner = LockstepHalvingPruner(min_resource=10, reduction_factor=2, epochs=40, report_every=10)
    out = {}
    for unit in units:
        cfg = type("C", (), {"kind": sampler, "n_startup_trials": "auto", "multivariate": True,
                             "constant_liar": True})()
        base = make_sampler(cfg, seed=member_seed(0, unit, 0), slots=4)
        st = optuna.load_study(study_name="cell", storage=storage,
                               sampler=ScopedSampler(base, [unit]) if scoped else base, pruner=pruner)
        out[unit] = OptunaSource(st, unit=unit, cell_key="c@1", space=SPACE, quota=12, base_seed=0,
                                 final_epoch=40, scope=[unit] if scoped else None)
    return out


def _record_seeds(sources, seeds: dict):
    """Wrap each source's ``next_member`` to note every member's seed as it is handed out."""
    for s in sources:
        def next_member(f=s.next_member):
            m = f()
            if m is not None:
                seeds[m.key] = m.seed
            return m
        s.next_member = next_member


def _run(order, scoped=True, sampler="tpe"):
    """Run both parts in ``order`` ("p0p1", "p1p0", "mix": a round of each in turn, or
    "crash": mix, but part 0 is killed after two rounds and resumed by a fresh source) and
    return what each part did: (unit, place in unit) → (lr, member seed, state)."""
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="cell", storage=storage, direction="minimize")
    src = _sources(storage, scoped, sampler)
    seeds = {}
    _record_seeds(src.values(), seeds)
    kw = {"slots": 4, "epochs": 40, "report_every": 10}
    if order in ("p0p1", "p1p0"):
        for u in (UNITS if order == "p0p1" else UNITS[::-1]):
            run_lockstep(src[u], **kw)
    else:
        gens = [lockstep_rounds(src[u], **kw) for u in UNITS]
        if order == "crash":
            for _ in range(2):
                next(gens[0]), next(gens[1])
            resumed = _sources(storage, scoped, sampler, units=UNITS[:1])[UNITS[0]]   # its members were lost
            running = [t for t in resumed.study.get_trials() if t.user_attrs["unit"] == UNITS[0]
                       and t.state.name == "RUNNING"]
            assert resumed.started > 4 and len(resumed.requeue) == len(running) == 4
            _record_seeds([resumed], seeds)
            gens[0] = lockstep_rounds(resumed, **kw)
        while gens:   # a round of each part in turn
            for g in list(gens):
                try:
                    next(g)
                except StopIteration:
                    gens.remove(g)
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


def test_a_resumed_part_draws_what_an_undisturbed_one_would():
    """Seeded random search in a split cell draws by the trial's place in its unit, so a
    part killed mid-search and resumed (its running members retrained) asks the same."""
    assert _run("crash", sampler="random") == _run("p0p1", sampler="random")


def test_without_scopes_the_order_leaks_into_the_search():
    """The negative control: one shared sampler and pruner history → order-dependent."""
    a, mixed = _run("p0p1", scoped=False), _run("mix", scoped=False)
    assert a != mixed

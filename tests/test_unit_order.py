"""Units start longest-first by `ShapePlan.unit_cost`, which counts layers as well as
parameters: a deep DLoR net trains several times slower per parameter than a
one-hidden-layer net (measured: ~70 µs a layer vs ~0.2 µs a parameter per member-step),
and ordering by parameters alone started the longest units last, leaving a slot idle
at the end of a phase (benchmarks/README.md, "Unit order")."""

from __future__ import annotations

from pathlib import Path

import yaml

from dlor_scale.plan import LAYER_COST, make_plan, member_step_cost
from dlor_scale.shapes import Shape, count_params
from dlor_scale.spec import load_study
from dlor_scale.tune import search_units

ROOT = Path(__file__).resolve().parents[1]


def test_member_step_cost_counts_layers():
    dense = Shape("dense", 4, 1, 25, 1)                               # 801 parameters, 3 layers
    deep = Shape("dlor_deep", 4, 1, 5, 22, diag="scalar")             # 383 parameters, 24 layers
    assert count_params(dense).total > 2 * count_params(deep).total
    assert member_step_cost(deep, count_params(deep).total) > 3 * member_step_cost(dense, count_params(dense).total)
    assert member_step_cost(dense, 801) == 801 + 3 * LAYER_COST


def test_search_units_start_the_deep_cells_first(tmp_path):
    spec = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    spec["output_dir"] = str(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    study = load_study(tmp_path / "s.yaml")
    plan = make_plan(study)
    units = search_units(study, plan)
    costs = [u["cost"] for u in units]
    assert costs == sorted(costs, reverse=True)
    # the largest dense/wide cells have more parameters than any deep one, yet the deep
    # cells' 20+-layer stacks come first
    first = [u["family"] for u in units[:4]]
    assert first == ["dlor_deep"] * 4, [(u["cell"], u["cost"]) for u in units[:6]]
    biggest = max(plan.cells, key=lambda c: c.shapes[0].n_params)
    assert biggest.family != "dlor_deep"

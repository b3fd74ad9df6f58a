"""Study specs: the shipped studies validate, and every kind of mistake is caught
with an error that names the YAML path (and the allowed values) and exits with 2."""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

from dlor_scale.errors import SpecError
from dlor_scale.spec import (
    HPARAMS,
    LOCATION_FIELDS,
    Distribution,
    Study,
    load_study,
    parse_study,
    study_json_schema,
)

STUDIES = Path(__file__).resolve().parents[1] / "studies"
SRC = "s.yaml"

# Small and cheap to solve, but exercising ranges, lists, a variant label and a pruner.
BASE = {
    "name": "t",
    "target": {"kind": "teacher", "d_in": 2, "widths": [4], "n_train": 64, "n_val": 16, "n_test": 16},
    "budgets": [200, 100],
    "tolerance": 0.05,
    "families": {
        "dense": {"width": {"min": 2, "max": 16}, "depth": [1, 2, 3]},
        "dlor_deep": {"width": [4, 8], "depth": {"min": 1, "max": 40}, "rank": 1, "diag": "scalar"},
    },
    "search_space": {
        "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "init_scale": 1.0,
    },
    "trials_per_cell": 4,
    "epochs": 20,
    "report_every": 5,
    "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
}


@functools.cache
def shipped(name: str) -> Study:
    return load_study(STUDIES / f"{name}.yaml")


def spec(**changes) -> dict:
    d = copy.deepcopy(BASE)
    d.update(copy.deepcopy(changes))
    return d


def with_family(label, **fields) -> dict:
    d = spec()
    d["families"][label] = {**d["families"].get(label, {}), **fields}
    return d


def with_space(name, value) -> dict:
    d = spec()
    d["search_space"][name] = value
    return d


def with_pruner(**p) -> dict:
    return spec(pruner=p)


def with_target(**fields) -> dict:
    d = spec()
    d["target"].update(fields)
    return d


def without(*keys) -> dict:
    d = spec()
    node = d
    for k in keys[:-1]:
        node = node[k]
    del node[keys[-1]]
    return d


def expect_error(data, path: str, *fragments: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_study(data, SRC)
    err = info.value
    msg = str(err)
    assert err.exit_code == 2
    assert f"{SRC}: {path}: " in msg, f"path {path!r} not in:\n{msg}"
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in:\n{msg}"
    return err


# (id, spec, yaml path, fragments that must also appear: allowed values, hints)
CORPUS = [
    # unknown keys at every level, each listing the keys that section allows
    ("unknown-top", spec(widht=1), "widht", "unknown key", "allowed: name, description, target"),
    ("unknown-family-key", with_family("dense", widht=3), "families.dense.widht", "allowed: family, width, depth"),
    ("unknown-range-key", with_family("dense", depth={"min": 1, "max": 3, "stop": 2}),
     "families.dense.depth.stop", "allowed: min, max, step"),
    ("unknown-target-key", with_target(foo=0), "target.foo", "unknown key", "d_in"),
    ("unknown-dist-key", with_space("lr", {"type": "float", "low": 0.1, "high": 1, "lo": 0}),
     "search_space.lr.lo", "allowed: type, low, high, log, step, choices"),
    ("unknown-sampler-key", spec(sampler={"kind": "tpe", "n_startup": 3}), "sampler.n_startup", "n_startup_trials"),
    ("unknown-pruner-key", with_pruner(kind="median", percentile=30), "pruner.percentile", "n_warmup_steps"),
    ("unknown-confirm-key", spec(confirm={"topk": 1}), "confirm.topk", "allowed: top_k, seeds"),
    ("unknown-resources-key", spec(resources={"cpu": 1, "memory": 4}), "resources.memory", "allowed: cpu, gpu"),
    ("unknown-hparam", with_space("momentum", 0.9), "search_space.momentum",
     "allowed: lr, weight_decay, init_scale, beta1, beta2"),
    # required keys
    ("missing-name", without("name"), "name", "required"),
    ("missing-target", without("target"), "target", "required"),
    ("missing-families", without("families"), "families", "required"),
    ("missing-search-space", without("search_space"), "search_space", "required"),
    ("missing-lr", spec(search_space={"weight_decay": 0.0}), "search_space", "'lr' is required"),
    ("missing-family-of-variant", with_family("deep_full", width=4, depth=3), "families.deep_full.family",
     "allowed: dense, lowrank, rank1, dlor_deep, dlor_wide"),
    ("missing-width", with_family("lowrank", depth=1), "families.lowrank.width", "required"),
    # name: it becomes a folder
    ("name-slash", spec(name="a/b"), "name", "names a folder"),
    ("name-dotdot", spec(name="a..b"), "name", "'..'"),
    ("name-parent", spec(name=".."), "name"),
    ("name-empty", spec(name=""), "name"),
    ("name-int", spec(name=5), "name"),
    # budgets
    ("budgets-empty", spec(budgets=[]), "budgets"),
    ("budgets-negative", spec(budgets=[100, -5]), "budgets[1]", "greater than or equal to 1"),
    ("budgets-zero", spec(budgets=[0, 100]), "budgets[0]"),
    ("budgets-duplicate", spec(budgets=[100, 200, 100]), "budgets", "duplicate budgets [100]"),
    ("budgets-not-list", spec(budgets="100"), "budgets"),
    ("budgets-fraction", spec(budgets=[100.5]), "budgets[0]"),
    ("budgets-bool", spec(budgets=[True]), "budgets[0]"),
    ("budgets-impossible", spec(budgets=[100, 200, 1_000_000]), "budgets[2]", "families.dense", "1000000"),
    ("budgets-impossible-one-family", with_family("dlor_deep", depth={"min": 1, "max": 2}),
     "budgets[0]", "families.dlor_deep", "nearest achievable counts"),
    # families
    ("families-empty", spec(families={}), "families", "at least 1"),
    ("families-list", spec(families=["dense"]), "families"),
    ("family-label-at", spec(families={"a@b": {"family": "dense", "width": 8, "depth": 1}}), "families.a@b"),
    ("family-unknown", with_family("mine", family="mlp", width=8, depth=1), "families.mine.family",
     "allowed: dense, lowrank"),
    ("width-zero", with_family("dense", width=0), "families.dense.width", "≥ 1"),
    ("depth-negative", with_family("dense", depth=[1, -1]), "families.dense.depth", "≥ 0"),
    ("range-reversed", with_family("dense", depth={"min": 3, "max": 1}), "families.dense.depth", "min (3) must be ≤ max (1)"),
    ("range-bad-max", with_family("dense", depth={"min": 1, "max": "x"}), "families.dense.depth.max"),
    ("range-step-zero", with_family("dense", width={"min": 2, "max": 8, "step": 0}), "families.dense.width.step"),
    ("width-string", with_family("dense", width="wide"), "families.dense.width"),
    ("width-empty-list", with_family("dense", width=[]), "families.dense.width"),
    ("rank-on-dense", with_family("dense", rank=2), "families.dense.rank", "family dense has no rank"),
    ("diag-on-dense", with_family("dense", diag="full"), "families.dense.diag", "has no diag"),
    ("diag-bad", with_family("dlor_deep", diag="sparse:0"), "families.dlor_deep.diag", "allowed: scalar, full, none"),
    ("io-bad", with_family("dense", io="conv"), "families.dense.io", "allowed: auto, dense, lowrank"),
    ("grid-too-large", with_family("dense", width={"min": 1, "max": 200_000}), "families.dense", "limit"),
    ("grid-astronomical", with_family("dense", width={"min": 1, "max": 10**12}), "families.dense.width", "limit AXIS_MAX"),  # axis bound, before the grid
    # search space distributions
    ("dist-low-ge-high", with_space("lr", {"type": "float", "low": 0.1, "high": 0.1}), "search_space.lr", "must be < high"),
    ("dist-log-nonpositive", with_space("weight_decay", {"type": "float", "low": 0, "high": 1, "log": True}),
     "search_space.weight_decay", "log scale needs low > 0"),
    ("dist-empty-choices", with_space("beta2", {"type": "categorical", "choices": []}), "search_space.beta2", "non-empty"),
    ("dist-unknown-type", with_space("lr", {"type": "normal", "low": 0.1, "high": 1}), "search_space.lr.type",
     "allowed: float, int, categorical"),
    ("dist-int-fraction", with_space("init_scale", {"type": "int", "low": 0.5, "high": 2}), "search_space.init_scale",
     "integer low"),
    ("dist-log-and-step", with_space("lr", {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}),
     "search_space.lr", "log with step"),
    ("dist-categorical-low", with_space("beta2", {"type": "categorical", "choices": [0.9], "low": 0}),
     "search_space.beta2", "only 'choices'"),
    ("dist-missing-high", with_space("lr", {"type": "float", "low": 0.1}), "search_space.lr", "both 'low' and 'high'"),
    ("dist-string-choices", with_space("beta1", {"type": "categorical", "choices": ["fast"]}), "search_space.beta1.choices[0]"),
    ("dist-out-of-domain", with_space("beta1", 1.5), "search_space.beta1", "[0, 1)"),
    ("lr-negative", with_space("lr", -0.1), "search_space.lr", "(0, inf)"),
    ("const-bool", with_space("init_scale", True), "search_space.init_scale", "not a boolean"),
    # sampler
    ("sampler-kind", spec(sampler={"kind": "grid"}), "sampler.kind", "allowed: tpe, random, qmc, cmaes"),
    ("sampler-no-kind", spec(sampler={"seed": 1}), "sampler.kind", "allowed: tpe"),
    ("sampler-qmc-type", spec(sampler={"kind": "qmc", "qmc_type": "lhs"}), "sampler.qmc_type", "allowed: sobol, halton"),
    ("sampler-seed-negative", spec(sampler={"kind": "random", "seed": -1}), "sampler.seed"),
    # pruner
    ("pruner-kind", with_pruner(kind="asha"), "pruner.kind", "allowed: median, percentile, successive_halving"),
    ("percentile-missing", with_pruner(kind="percentile"), "pruner.percentile", "required"),
    ("percentile-range", with_pruner(kind="percentile", percentile=150), "pruner.percentile", "less than 100"),
    ("sh-reduction", with_pruner(kind="successive_halving", reduction_factor=1), "pruner.reduction_factor"),
    ("sh-min-resource", with_pruner(kind="successive_halving", min_resource="soon"), "pruner.min_resource", "'auto'"),
    ("hyperband-order", with_pruner(kind="hyperband", min_resource=3, max_resource=2), "pruner", "max_resource (2)"),
    ("hyperband-too-long", with_pruner(kind="hyperband", max_resource=50), "pruner.max_resource", "≤ epochs (20)"),
    ("median-never-prunes", with_pruner(kind="median", n_warmup_steps=20), "pruner.n_warmup_steps", "nothing would ever be pruned"),
    ("wilcoxon-p", with_pruner(kind="wilcoxon", p_threshold=1.5), "pruner.p_threshold"),
    # schedule
    ("report-every-gt-epochs", spec(report_every=50), "report_every", "≤ epochs (20)"),
    ("epochs-zero", spec(epochs=0), "epochs"),
    ("epochs-string", spec(epochs="many"), "epochs", "valid integer"),
    ("trials-zero", spec(trials_per_cell=0), "trials_per_cell"),
    ("cohort-zero", spec(cohort_size=0), "cohort_size", "'auto'"),
    ("cohort-word", spec(cohort_size="big"), "cohort_size", "'auto'"),
    ("batch-zero", spec(batch_size=0), "batch_size"),
    ("batch-gt-ntrain", spec(batch_size=128), "batch_size", "n_train (64)"),
    ("shapes-gt-trials", spec(shapes_per_cell=5), "shapes_per_cell", "trials_per_cell (4)"),
    ("checkpoint-zero", spec(checkpoint_every=0), "checkpoint_every"),
    ("seed-negative", spec(seed=-1), "seed"),
    ("threshold-negative", spec(threshold=-1e-3), "threshold"),
    ("tolerance-zero", spec(tolerance=0), "tolerance"),
    ("tolerance-big", spec(tolerance=0.9), "tolerance"),
    # enums
    ("metric", spec(metric="mae"), "metric", "allowed: mse, rmse, max_abs, rel_l2"),
    ("policy", spec(policy="random"), "policy", "allowed: closest, deepest, widest"),
    ("activation", spec(activation="swish"), "activation", "allowed: tanh, relu"),
    ("device", spec(device="tpu"), "device", "allowed: auto, cpu, cuda"),
    ("precision", spec(precision="fp16"), "precision", "allowed: fp32, tf32, bf16"),
    ("compile", spec(compile="maybe"), "compile", "allowed: auto, true, false"),
    ("cuda-without-gpu", spec(device="cuda"), "device", "resources.gpu > 0"),
    # confirm / resources
    ("confirm-topk-zero", spec(confirm={"top_k": 0, "seeds": 3}), "confirm.top_k"),
    ("confirm-topk-gt-trials", spec(confirm={"top_k": 5, "seeds": 3}), "confirm.top_k", "trials_per_cell (4)"),
    ("confirm-seeds-type", spec(confirm={"top_k": 1, "seeds": "x"}), "confirm.seeds"),
    ("resources-cpu-zero", spec(resources={"cpu": 0}), "resources.cpu", "greater than 0"),
    ("resources-gpu-negative", spec(resources={"gpu": -1}), "resources.gpu"),
    ("resources-gpu-fraction", spec(resources={"gpu": 1.5}), "resources.gpu", "fractional GPUs only below 1"),
    # target
    ("target-kind", with_target(kind="spiral"), "target.kind", "allowed: teacher, sawtooth, nonridge, parquet"),
    ("target-no-kind", spec(target={"d_in": 2}), "target.kind", "required"),
    ("target-d-in", with_target(d_in=0), "target.d_in"),
    ("target-n-train", with_target(n_train=-3), "target.n_train"),
    ("target-widths-item", with_target(widths=[4, "x"]), "target.widths[1]"),
    ("target-activation", with_target(activation="swish"), "target.activation", "allowed: tanh"),
    ("target-not-mapping", spec(target="teacher"), "target"),
    ("tracking-uri-type", spec(tracking_uri=5), "tracking_uri"),
]


def test_corpus_is_large_and_unique():
    assert len(CORPUS) >= 50
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_spec_is_rejected_with_its_path(case):
    _, data, path, *fragments = case
    expect_error(data, path, *fragments)


def test_base_of_corpus_is_valid():
    """Otherwise the corpus could pass for the wrong reason."""
    s = parse_study(spec(), SRC)
    assert s.budgets == [100, 200]
    assert s.families["dense"].family == "dense"


def test_every_problem_is_listed_once_per_line():
    err = expect_error(spec(metric="mae", epochs=0, widht=1), "metric")
    lines = str(err).splitlines()
    assert lines[0] == f"{SRC}: 3 problems in study spec"
    assert {ln.split(": ")[1] for ln in lines[1:]} == {"metric", "epochs", "widht"}
    assert [p.path for p in err.problems] and all(ln.startswith(f"{SRC}: ") for ln in lines)


def test_got_value_is_shown():
    expect_error(spec(metric="mae"), "metric", "(got 'mae')")


@pytest.mark.skipif(importlib.util.find_spec("cmaes") is not None, reason="cmaes is installed")
def test_cmaes_without_package_is_rejected_up_front():
    expect_error(spec(sampler={"kind": "cmaes"}), "sampler.kind", "pip install cmaes")


def test_not_a_mapping():
    for data in ([1, 2], "name: x", None):
        with pytest.raises(SpecError, match="must be a mapping"):
            parse_study(data, SRC)


# --------------------------------------------------------------------------- files


def test_shipped_studies_validate():
    for name in ("quickstart", "budget"):
        s = shipped(name)
        assert s.name == name
        assert s.source.endswith(f"{name}.yaml")
        assert s.base_dir == STUDIES


def test_budget_study_is_the_headline():
    s = shipped("budget")
    assert set(s.families) >= {"dense", "lowrank", "dlor_deep", "dlor_wide"}
    assert len(s.budgets) >= 5 and s.budgets[-1] / s.budgets[0] >= 100
    assert s.trials_per_cell == 96 and s.cohort_size == "auto" and s.epochs == 5000
    assert s.resources.gpu == 0.25 and s.confirm.top_k == 3 and s.confirm.seeds == 5


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="not found") as info:
        load_study(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(info.value) and info.value.exit_code == 2


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nbudgets: [1, 2\nepochs: 3\n")
    with pytest.raises(SpecError) as info:
        load_study(f)
    assert str(f) in str(info.value) and "line 3" in str(info.value) and info.value.exit_code == 2


@pytest.mark.parametrize("text, what", [("- a\n- b\n", "list"), ("", "empty file"), ("42\n", "int")])
def test_yaml_not_a_mapping(tmp_path, text, what):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(SpecError, match=f"must be a mapping.*{what}"):
        load_study(f)


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    f = tmp_path / "s.yaml"
    body = yaml.safe_dump(spec(), sort_keys=False)
    f.write_text(body + "epochs: 30\n")
    with pytest.raises(SpecError, match="duplicate key 'epochs' \\(first defined on line"):
        load_study(f)


def test_file_errors_carry_the_file_name(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump(spec(metric="mae")))
    with pytest.raises(SpecError, match=rf"{f}: metric: invalid value"):
        load_study(f)


def test_yaml_scientific_notation_is_accepted(tmp_path):
    """PyYAML reads 1e-3 and 2e2 as strings; they must still mean numbers."""
    f = tmp_path / "s.yaml"
    text = yaml.safe_dump(spec(budgets=[100, 200])).replace("- 200", "- 2e2")
    text = text.replace("low: 0.001", "low: 1e-3")
    assert "2e2" in text and "1e-3" in text
    f.write_text(text)
    s = load_study(f)
    assert s.budgets == [100, 200] and s.search_space["lr"].low == 0.001


# --------------------------------------------------------------------------- hash and paths


def test_spec_hash_is_stable_and_canonical():
    a = parse_study(spec(), SRC)
    reordered = dict(reversed(list(copy.deepcopy(BASE).items())))
    reordered["budgets"] = ["2e2", 100.0]
    b = parse_study(reordered, "other.yaml")
    c = parse_study(spec(pruner={**BASE["pruner"], "interval_steps": 1}), SRC)  # explicit default
    assert a.spec_hash() == b.spec_hash() == c.spec_hash()
    assert re.fullmatch(r"[0-9a-f]{12}", a.spec_hash()), a.spec_hash()


@pytest.mark.parametrize("change", [
    {"epochs": 25},
    {"budgets": [100, 200, 400]},
    {"search_space": {"lr": {"type": "float", "low": 1e-3, "high": 2e-1, "log": True}}},
    {"pruner": {"kind": "none"}},
    {"seed": 1},
])
def test_spec_hash_is_sensitive(change):
    d = spec(**change)
    d["families"]["dense"]["width"] = {"min": 2, "max": 32}  # makes 400 reachable
    base = spec()
    base["families"]["dense"]["width"] = {"min": 2, "max": 32}
    assert parse_study(d, SRC).spec_hash() != parse_study(base, SRC).spec_hash()


def test_a_field_added_later_hashes_only_when_set():
    """finish.precision and parts_per_cell came after studies were run: at their defaults
    (what those specs meant) the hash is the one computed before the fields existed, so
    their folders still resume; set otherwise it is a different study."""
    with_finish = spec(finish={"iterations": 50})
    canon = parse_study(with_finish, SRC).model_dump(mode="json", exclude={"description", *LOCATION_FIELDS})
    del canon["finish"]["precision"]   # the spec as it dumped before the fields existed
    del canon["parts_per_cell"]
    before = hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=True).encode()).hexdigest()[:12]
    default = parse_study(with_finish, SRC).spec_hash()
    explicit = parse_study(spec(finish={"iterations": 50, "precision": "fp64"}), SRC).spec_hash()
    fp32 = parse_study(spec(finish={"iterations": 50, "precision": "fp32"}), SRC).spec_hash()
    assert default == explicit == before != fp32
    parts = {parse_study(spec(finish={"iterations": 50}, parts_per_cell=p), SRC).spec_hash() for p in (1, 2, 3)}
    assert len(parts) == 3 and default in parts


def test_spec_hash_ignores_where_the_study_runs():
    """Resuming on a cluster or against another tracking server is the same study."""
    here = parse_study(spec(), SRC)
    there = parse_study(spec(ray_address="auto", tracking_uri="http://mlflow:5000", output_dir="/srv/runs",
                             optuna_storage="postgresql://db/optuna", description="moved"), SRC)
    assert here.spec_hash() == there.spec_hash()


@pytest.mark.parametrize("name", ["quickstart", "budget"])
def test_dumped_spec_parses_back_identically(name):
    """Workers rebuild the study from ``model_dump(mode='json')``; it must round-trip."""
    s = shipped(name)
    again = parse_study(json.loads(json.dumps(s.model_dump(mode="json"))), s.source)
    assert again == s and again.spec_hash() == s.spec_hash()


def test_default_valued_axis_on_a_family_without_it_is_fine():
    d = with_family("dense", rank=1, branches=1, diag="scalar")
    assert parse_study(d, SRC).families["dense"].grid()["diag"] == "none"


def test_study_dir_defaults_and_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DLOR_OUTPUT_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DLOR_OPTUNA_STORAGE", raising=False)
    s = parse_study(spec(), SRC)
    assert s.study_dir() == tmp_path / "runs" / "t"
    assert s.resolved_tracking_uri() == f"sqlite:///{tmp_path}/runs/t/mlflow.db"
    assert s.resolved_optuna_storage() == f"journal:///{tmp_path}/runs/t/optuna.journal"

    monkeypatch.setenv("DLOR_OUTPUT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("DLOR_OPTUNA_STORAGE", "postgresql://db/optuna")
    assert s.study_dir() == tmp_path / "elsewhere" / "t"
    assert s.resolved_tracking_uri() == "http://mlflow:5000"
    assert s.resolved_optuna_storage() == "postgresql://db/optuna"

    explicit = parse_study(spec(output_dir="out", tracking_uri="sqlite:///x.db", optuna_storage="sqlite:///y.db"), SRC)
    assert explicit.study_dir() == tmp_path / "out" / "t"  # the spec wins over the env
    assert explicit.resolved_tracking_uri() == "sqlite:///x.db"
    assert explicit.resolved_optuna_storage() == "sqlite:///y.db"


def test_study_dir_must_stay_inside_output_dir(tmp_path):
    good = parse_study(spec(output_dir=str(tmp_path)), SRC)
    escaped = good.model_copy(update={"name": "../evil"})  # bypasses validation on purpose
    with pytest.raises(SpecError, match="outside"):
        escaped.study_dir()
    assert good.study_dir().parent == tmp_path.resolve()


# --------------------------------------------------------------------------- Optuna compatibility


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("pruner, cls, built_with", [
    ({"kind": "median", "n_startup_trials": 2}, "LockstepMedianPruner",
     lambda p: p.percentile == 50 and p.n_peers == 2),
    ({"kind": "percentile", "percentile": 25}, "LockstepPercentilePruner",
     lambda p: p.percentile == 25 and p.n_peers == 5),
    ({"kind": "successive_halving", "min_resource": 2}, "LockstepHalvingPruner",
     lambda p: p.eta == 3 and p.rungs == [2, 6, 18]),
    ({"kind": "hyperband", "min_resource": 1, "max_resource": 4, "reduction_factor": 2}, "LockstepHyperbandPruner",
     lambda p: p.eta == 2 and p.brackets == [[1, 2], [2], []]),
    ({"kind": "wilcoxon", "p_threshold": 0.05}, "WilcoxonPruner", lambda p: True),
    ({"kind": "none"}, "NopPruner", lambda p: True),
])
def test_pruner_settings_reach_the_pruner_the_search_builds(pruner, cls, built_with):
    """`pruners.make_pruner` builds each kind from the spec's fields, passed through by name
    (``model_dump(exclude={'kind'})``): a field the pruner does not take would fail here."""
    from unittest import mock

    from dlor_scale import pruners

    s = parse_study(spec(pruner=pruner, epochs=20, report_every=1), SRC)
    built = pruners.make_pruner(s.pruner, epochs=s.epochs, report_every=s.report_every)
    assert type(built).__name__ == cls and isinstance(built, optuna.pruners.BasePruner)
    assert built_with(built), vars(built)
    if pruner["kind"] == "wilcoxon":   # Optuna's own pruner: the settings go to its constructor
        with mock.patch.object(optuna.pruners, "WilcoxonPruner") as wilcoxon:
            pruners.make_pruner(s.pruner)
        wilcoxon.assert_called_once_with(p_threshold=0.05, n_startup_steps=2)


def test_search_space_samples_in_optuna():
    space = {
        "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "weight_decay": {"type": "float", "low": 0.0, "high": 1e-2, "step": 1e-3},
        "init_scale": {"type": "int", "low": 1, "high": 3},
        "beta1": 0.9,
        "beta2": {"type": "categorical", "choices": [0.99, 0.999]},
    }
    s = parse_study(spec(search_space=space), SRC)
    assert tuple(s.search_space) == HPARAMS
    trial = optuna.create_study().ask()
    for name, d in s.search_space.items():
        if not isinstance(d, Distribution):
            continue
        if d.type == "float":
            v = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif d.type == "int":
            assert isinstance(d.low, int) and isinstance(d.high, int)
            v = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step or 1)
        else:
            v = trial.suggest_categorical(name, d.choices)
        lo, hi = d.bounds()
        assert lo <= v <= hi


def test_json_schema_describes_the_file():
    schema = study_json_schema()
    json.dumps(schema)
    assert {"name", "target", "budgets", "families", "search_space"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    assert Study.model_json_schema() == schema


# --------------------------------------------------------------------------- trainable shapes (max_depth, K·r ≤ width, strict)

from dlor_scale.budget import DEFAULT_MAX_DEPTH  # noqa: E402

# d_in 2, d_out 1: dlor_deep at width 4 has 17 + 13·L parameters; 17 + 13·40 = 537.
DEEP_ONLY = {"dlor_deep": {"width": 4, "depth": {"min": 1, "max": 60}, "rank": 1, "diag": "scalar"}}
WIDE_ONLY = {"dlor_wide": {"width": 4, "depth": 1, "rank": 1, "branches": {"min": 1, "max": 40}, "diag": "scalar"}}


def test_max_depth_defaults_to_the_measured_cap_for_dlor_only():
    s = parse_study(spec(), SRC)
    assert s.families["dlor_deep"].max_depth == "auto"
    assert s.families["dlor_deep"].resolved_max_depth() == DEFAULT_MAX_DEPTH
    assert s.families["dense"].resolved_max_depth() is None
    assert s.solve_kwargs("dlor_deep")["rules"].max_depth == DEFAULT_MAX_DEPTH
    lifted = parse_study(with_family("dlor_deep", max_depth=None), SRC)
    assert lifted.families["dlor_deep"].resolved_max_depth() is None
    assert parse_study(with_family("dense", max_depth=2), SRC).families["dense"].resolved_max_depth() == 2
    assert s.strict is False


@pytest.mark.parametrize("value, allowed", [(-1, "≥ 0"), ("deep", "auto")])
def test_max_depth_must_be_a_depth_auto_or_null(value, allowed):
    with pytest.raises(SpecError) as info:
        parse_study(with_family("dlor_deep", max_depth=value), SRC)
    assert "families.dlor_deep.max_depth" in str(info.value) and info.value.exit_code == 2


def _forced(families, budgets, **more):
    """Random sampler: strict also refuses search settings that cannot learn (BASE's TPE)."""
    return spec(families=families, budgets=budgets, tolerance=0.02, sampler={"kind": "random"}, **more)


def test_depth_past_the_cap_warns_and_strict_refuses():
    depth = DEFAULT_MAX_DEPTH + 4
    budget = 17 + 13 * depth        # width 4 only: the ranges force this depth
    s = parse_study(_forced(DEEP_ONLY, [budget]), SRC)  # a warning, not an error …
    from dlor_scale.plan import make_plan
    (line,) = make_plan(s).warnings
    assert line.startswith(f"cell dlor_deep@{budget} (dlor_deep-w4-L{depth}-r1-K1-scalar): "
                           f"depth {depth} > max_depth {DEFAULT_MAX_DEPTH}")
    assert "fix: allow wider widths (families.dlor_deep.width)" in line
    with pytest.raises(SpecError) as info:  # … which strict makes an error (exit 2)
        parse_study(_forced(DEEP_ONLY, [budget], strict=True), SRC)
    msg = str(info.value)
    assert f"families.dlor_deep: strict: cell dlor_deep@{budget}" in msg and "max_depth" in msg
    assert info.value.exit_code == 2
    # raising the cap (a measured choice) makes it legal again, strict or not
    ok = _forced({"dlor_deep": {**DEEP_ONLY["dlor_deep"], "max_depth": depth}}, [budget], strict=True)
    assert make_plan(parse_study(ok, SRC)).warnings == ()


def test_branches_past_width_warns_and_strict_refuses():
    budget = count_wide = 2 * 4 + 4 + 4 + 1 + (1 + 4 + 2 * 4 * 9)  # width 4, K 9 > 4: 94
    from dlor_scale.plan import make_plan
    (line,) = make_plan(parse_study(_forced(WIDE_ONLY, [count_wide]), SRC)).warnings
    assert line.startswith(f"cell dlor_wide@{budget} (dlor_wide-w4-L1-r1-K9-scalar): branches·rank 9·1 = 9 > width 4")
    assert "fix: allow wider widths (families.dlor_wide.width)" in line
    with pytest.raises(SpecError, match=r"families\.dlor_wide: strict: cell dlor_wide@94 .*> width 4") as info:
        parse_study(_forced(WIDE_ONLY, [budget], strict=True), SRC)
    assert info.value.exit_code == 2


def test_strict_accepts_a_spec_whose_cells_all_keep_the_rules():
    s = parse_study(spec(strict=True, sampler={"kind": "random"}), SRC)
    from dlor_scale.plan import make_plan
    assert make_plan(s).warnings == ()

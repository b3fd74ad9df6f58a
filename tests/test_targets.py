"""Targets: deterministic, correctly split, with the values they claim, and clear data errors."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from dlor_scale.errors import DataError
from dlor_scale.targets import (
    Dataset,
    NonridgeTarget,
    ParquetTarget,
    SawtoothTarget,
    TargetSpec,
    TeacherTarget,
    make_dataset,
    sawtooth,
)

SPEC = TypeAdapter(TargetSpec)
SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
SMALL = dict(n_train=64, n_val=32, n_test=48)


def synthetic_targets():
    return [
        TeacherTarget(**SMALL),
        TeacherTarget(**SMALL, d_in=3, widths=[8], activation="relu", d_out=2),
        SawtoothTarget(**SMALL),
        SawtoothTarget(**SMALL, d_in=3, teeth=3),
        NonridgeTarget(**SMALL),
        NonridgeTarget(**SMALL, function="radial", d_in=3),
    ]


def same(a: Dataset, b: Dataset) -> bool:
    return all(torch.equal(getattr(a, s), getattr(b, s)) for s in SPLITS)


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("target", synthetic_targets(), ids=lambda t: f"{t.kind}-d{t.d_in}")
def test_synthetic_shapes_dtypes_and_range(target):
    ds = make_dataset(target)
    d_out = getattr(target, "d_out", 1)
    for split, n in (("train", 64), ("val", 32), ("test", 48)):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        assert x.shape == (n, target.d_in) and y.shape == (n, d_out)
        assert x.dtype == y.dtype == torch.float32
        assert x.device.type == "cpu"
        assert x.min() >= -1 and x.max() <= 1
        assert torch.isfinite(y).all()
    assert (ds.d_in, ds.d_out) == (target.d_in, d_out)
    assert ds.meta["target"]["kind"] == target.kind


@pytest.mark.parametrize("target", synthetic_targets(), ids=lambda t: f"{t.kind}-d{t.d_in}")
def test_synthetic_is_deterministic_and_seed_dependent(target):
    assert same(make_dataset(target), make_dataset(target.model_copy()))
    other = make_dataset(target.model_copy(update={"seed": 1}))
    assert not torch.equal(make_dataset(target).x_train, other.x_train)


def test_splits_are_disjoint_draws_and_independent_of_other_split_sizes():
    ds = make_dataset(SawtoothTarget(**SMALL, d_in=2))
    rows = [tuple(r) for s in ("x_train", "x_val", "x_test") for r in getattr(ds, s).tolist()]
    assert len(set(rows)) == len(rows)
    bigger = make_dataset(SawtoothTarget(n_train=64, n_val=500, n_test=7, d_in=2))
    assert torch.equal(ds.x_train, bigger.x_train) and torch.equal(ds.y_train, bigger.y_train)
    # Growing n_train extends the training set; it does not redraw it.
    grown = make_dataset(SawtoothTarget(n_train=128, n_val=32, n_test=48, d_in=2))
    assert torch.equal(grown.x_train[:64], ds.x_train)


def test_sawtooth_1d_has_teeth_peaks_on_dense_grid():
    grid = torch.linspace(-1, 1, 20011, dtype=torch.float64)
    for teeth in (1, 3, 8):
        y = sawtooth(grid, teeth)
        d = torch.diff(y)
        peaks = int(((d[:-1] > 0) & (d[1:] <= 0)).sum())
        assert peaks == teeth
        assert y.min() >= -1 and y.max() <= 1 and y.max() > 0.99


def test_sawtooth_is_composed_tent_map():
    # Telgarsky: k-fold tent map on [0, 1] has 2^(k-1) teeth.
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    h = t.clone()
    for _ in range(4):
        h = torch.where(h < 0.5, 2 * h, 2 * (1 - h))
    assert torch.allclose(sawtooth(2 * t - 1, 8), 2 * h - 1, atol=1e-12)


def test_sawtooth_dataset_values_multid_is_mean_over_coordinates():
    ds = make_dataset(SawtoothTarget(**SMALL, d_in=3, teeth=5))
    expected = sawtooth(ds.x_test.double(), 5).mean(1, keepdim=True).float()
    assert torch.equal(ds.y_test, expected)


def test_nonridge_product_is_x1_times_x2_and_radial_is_centred_norm():
    ds = make_dataset(NonridgeTarget(**SMALL, d_in=4))
    x = ds.x_train.double()
    assert torch.equal(ds.y_train, (x[:, :1] * x[:, 1:2]).float())
    big = make_dataset(NonridgeTarget(n_train=20000, n_val=1, n_test=1, function="radial", d_in=3))
    x = big.x_train.double()
    assert torch.allclose(big.y_train.double(), (x**2).sum(1, keepdim=True) - 1.0, atol=1e-6)
    assert abs(big.y_train.mean().item()) < 0.02


@pytest.mark.parametrize("widths,activation", [([32, 32], "tanh"), ([64, 16, 64], "relu")])
def test_teacher_output_has_unit_scale(widths, activation):
    ds = make_dataset(TeacherTarget(n_train=8192, n_val=1, n_test=1, widths=widths, activation=activation))
    assert ds.y_train.std().item() == pytest.approx(1.0, abs=0.05)
    assert abs(ds.y_train.mean().item()) < 0.05


def test_teacher_function_is_shared_across_splits():
    # Same seed → same teacher: a point in val must have the value train would give it.
    a = make_dataset(TeacherTarget(**SMALL))
    b = make_dataset(TeacherTarget(n_train=64, n_val=5, n_test=48))
    assert torch.equal(a.y_val[:5], b.y_val) and torch.equal(a.x_val[:5], b.x_val)


def test_noise_only_in_train():
    clean = make_dataset(NonridgeTarget(**SMALL))
    noisy = make_dataset(NonridgeTarget(**SMALL, noise=0.5))
    assert torch.equal(clean.x_train, noisy.x_train)
    assert torch.equal(clean.y_val, noisy.y_val) and torch.equal(clean.y_test, noisy.y_test)
    resid = noisy.y_train - clean.y_train
    assert resid.abs().max() > 0 and 0.3 < resid.std().item() < 0.7
    assert torch.equal(noisy.y_train, make_dataset(NonridgeTarget(**SMALL, noise=0.5)).y_train)


def test_to_device_returns_copy_with_same_values():
    ds = make_dataset(SawtoothTarget(**SMALL))
    moved = ds.to("cpu")
    assert same(ds, moved) and moved.name == ds.name and moved.meta == ds.meta


# --------------------------------------------------------------------------- spec validation


def test_spec_discriminator_and_defaults():
    t = SPEC.validate_python({"kind": "sawtooth", "teeth": 4})
    assert isinstance(t, SawtoothTarget) and (t.teeth, t.d_in, t.n_train, t.seed, t.noise) == (4, 1, 1024, 0, 0.0)
    t = SPEC.validate_python({"kind": "teacher"})
    assert isinstance(t, TeacherTarget) and t.widths == [32, 32] and t.activation == "tanh"
    t = SPEC.validate_python({"kind": "parquet", "path": "d.parquet", "features": ["a"], "targets": ["b"]})
    assert isinstance(t, ParquetTarget) and t.val_fraction == t.test_fraction == 0.15 and t.standardize


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "sawtooth", "teeth": 0},
        {"kind": "spiral"},
        {"kind": "teacher", "widths": [32], "depth": 3},
        {"kind": "teacher", "activation": "swish"},
        {"kind": "teacher", "widths": [0]},
        {"kind": "nonridge", "d_in": 1},
        {"kind": "nonridge", "function": "sine"},
        {"kind": "teacher", "n_train": 0},
        {"kind": "teacher", "seed": -1},
        {"kind": "teacher", "noise": -0.1},
        {"kind": "parquet", "path": "d.parquet", "features": [], "targets": ["y"]},
        {"kind": "parquet", "path": "d.parquet", "features": ["a"], "targets": ["a"]},
        {"kind": "parquet", "path": "d.parquet", "features": ["a"], "targets": ["y"], "val_fraction": 0.5,
         "test_fraction": 0.5},
        {"kind": "parquet", "path": "d.parquet", "features": ["a"], "targets": ["y"], "n_val": 10},
    ],
)
def test_spec_rejects_bad_fields(bad):
    with pytest.raises(ValidationError):
        SPEC.validate_python(bad)


# --------------------------------------------------------------------------- parquet


def write_table(path, n=200, **overrides):
    rng = np.random.default_rng(123)
    cols = {
        "a": rng.normal(5.0, 2.0, n),
        "b": rng.integers(0, 100, n).astype(np.int64),
        "y": rng.normal(-3.0, 10.0, n),
        "label": [f"s{i}" for i in range(n)],
    }
    cols.update(overrides)
    pq.write_table(pa.table(cols), path)
    return path


def pq_target(path, **kw):
    return ParquetTarget(path=str(path), features=kw.pop("features", ["a", "b"]), targets=kw.pop("targets", ["y"]), **kw)


def test_parquet_round_trip_standardized_with_train_stats(tmp_path):
    write_table(tmp_path / "data.parquet")
    ds = make_dataset(pq_target("data.parquet"), base_dir=tmp_path)  # relative → base_dir
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (140, 30, 30)
    assert ds.d_in == 2 and ds.d_out == 1 and ds.x_train.dtype == torch.float32
    # Train split is standardized exactly; val/test use the *train* statistics.
    assert torch.allclose(ds.x_train.double().mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(ds.x_train.double().std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5)
    assert ds.meta["source"].endswith("data.parquet") and ds.meta["features"] == ["a", "b"]
    # Every row maps back to a row of the file, and the splits partition the file.
    raw = pq.read_table(tmp_path / "data.parquet").to_pandas()
    rows = []
    for s in ("train", "val", "test"):
        x = getattr(ds, f"x_{s}").double().numpy() * ds.meta["x_std"] + ds.meta["x_mean"]
        y = ds.unscale_y(getattr(ds, f"y_{s}").double()).numpy()
        rows += [tuple(np.round(r, 3)) for r in np.concatenate([x, y], 1)]
    assert sorted(rows) == sorted(tuple(np.round(r, 3)) for r in raw[["a", "b", "y"]].to_numpy(float))
    train_x = ds.x_train.double().numpy() * ds.meta["x_std"] + ds.meta["x_mean"]
    assert np.allclose(ds.meta["x_mean"], train_x.mean(0)) and not np.allclose(ds.meta["x_mean"], raw[["a", "b"]].mean())


def test_parquet_deterministic_seeded_shuffle_and_raw_mode(tmp_path):
    p = write_table(tmp_path / "data.parquet")
    a, b = make_dataset(pq_target(p)), make_dataset(pq_target(p))
    assert same(a, b)
    assert not torch.equal(a.x_train, make_dataset(pq_target(p, seed=1)).x_train)
    raw = make_dataset(pq_target(p, standardize=False, n_train=50))
    assert len(raw.x_train) == 50 and "y_mean" not in raw.meta
    assert torch.equal(raw.unscale_y(raw.y_val), raw.y_val)
    assert raw.x_train[:, 1].eq(raw.x_train[:, 1].round()).all()  # int column kept exact


def test_parquet_noise_only_in_train(tmp_path):
    p = write_table(tmp_path / "data.parquet")
    clean, noisy = make_dataset(pq_target(p)), make_dataset(pq_target(p, noise=0.1))
    assert torch.equal(clean.y_val, noisy.y_val) and not torch.equal(clean.y_train, noisy.y_train)


def assert_data_error(target, *needles, base_dir=None):
    with pytest.raises(DataError) as exc:
        make_dataset(target, base_dir=base_dir)
    for needle in needles:
        assert needle in str(exc.value), str(exc.value)
    return str(exc.value)


def test_parquet_missing_file(tmp_path):
    assert_data_error(pq_target("nope.parquet"), "nope.parquet", "'a'", base_dir=tmp_path)


def test_parquet_missing_column_lists_available(tmp_path):
    p = write_table(tmp_path / "data.parquet")
    msg = assert_data_error(pq_target(p, features=["a", "zzz"]), "data.parquet", "zzz")
    assert "label" in msg and "'y'" in msg  # available columns are listed


def test_parquet_non_numeric_column_names_type(tmp_path):
    p = write_table(tmp_path / "data.parquet")
    assert_data_error(pq_target(p, features=["a", "label"]), "data.parquet", "label", "string")


@pytest.mark.parametrize("null", [float("nan"), None])
def test_parquet_nan_and_null_are_counted(tmp_path, null):
    a = np.random.default_rng(0).normal(size=200).tolist()
    a[3] = a[17] = a[40] = null
    p = write_table(tmp_path / "data.parquet", a=pa.array(a, type=pa.float64(), from_pandas=False))
    assert_data_error(pq_target(p), "data.parquet", "'a'", "3 ")


def test_parquet_empty_table_and_empty_split(tmp_path):
    p = write_table(tmp_path / "empty.parquet", n=0)
    assert_data_error(pq_target(p), "empty.parquet", "'a'", "empty")
    p = write_table(tmp_path / "tiny.parquet", n=5)
    assert_data_error(pq_target(p), "tiny.parquet", "'a'", "empty split")


@pytest.mark.parametrize("standardize", [True, False])
def test_parquet_constant_column_is_refused(tmp_path, standardize):
    """A constant feature carries nothing, a constant target leaves nothing to learn, and
    neither can be standardized: refused with or without standardisation."""
    p = write_table(tmp_path / "data.parquet", b=np.full(200, 7, dtype=np.int64))
    assert_data_error(pq_target(p, standardize=standardize), "data.parquet", "'b'", "constant")
    p = write_table(tmp_path / "y.parquet", y=np.full(200, 1.5))
    assert_data_error(pq_target(p, standardize=standardize), "y.parquet", "'y'", "constant")


def test_parquet_not_a_parquet_file(tmp_path):
    p = tmp_path / "data.parquet"
    p.write_text("a,b,y\n1,2,3\n")
    assert_data_error(pq_target(p), "data.parquet", "'a'")


def test_math_sanity_of_sawtooth_peak_positions():
    # Peaks of the 8-tooth wave sit at x = (k + 1/2)/4 − 1.
    xs = torch.tensor([(k + 0.5) / 4 - 1 for k in range(8)], dtype=torch.float64)
    assert torch.allclose(sawtooth(xs, 8), torch.ones(8, dtype=torch.float64))
    assert math.isclose(sawtooth(torch.tensor([-1.0]), 8).item(), -1.0)

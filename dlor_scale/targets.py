"""Regression targets for scaling studies, each chosen to probe one claim of the paper.

Why these four:

* ``teacher``  — a random dense MLP. The paper's Figs 2a/3a measure how well deep
  (multiplicative) and wide (additive) DLoR networks approximate a *dense MLP*; a
  teacher-student setup makes "approximate a dense network" a concrete regression task
  whose difficulty is set by the teacher's widths and activation.
* ``sawtooth`` — a triangle wave with many teeth. Telgarsky (2016) shows such functions
  separate depth from width: depth L produces 2^L teeth cheaply, while a shallow net
  needs width proportional to the number of teeth. It is the natural target for
  "multiplicative depth scales better than additive width" and is what the paper's
  experiments reportedly use.
* ``nonridge`` — x1·x2 or ‖x‖². A rank-1 first layer makes the whole network a ridge
  function g(vᵀx), blind to every direction orthogonal to v ("orthogonal blindness");
  these targets are not ridge functions, so rank-1 nets must fail on them and DLoR nets
  must not.
* ``parquet``  — the user's own data, so the same study machinery runs on real tables.

Determinism: every synthetic random draw comes from its own generator, seeded from
``(seed, stream)`` via ``numpy.random.SeedSequence``. The streams are disjoint, so
changing ``n_val`` never changes the training set, and the same config always gives
bit-identical tensors. Inputs are drawn in float32 and targets are computed in float64
from those exact float32 inputs, then rounded once to float32.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dlor_scale.errors import DataError

if TYPE_CHECKING:  # torch is imported where data is made, not at import: the target
    from torch import Tensor  # schemas serve `validate`/`schema`, which never need it

# One generator stream per independent random draw (see module docstring).
_STREAM_WEIGHTS, _STREAM_TRAIN, _STREAM_VAL, _STREAM_TEST, _STREAM_NOISE, _STREAM_CALIB = range(6)

# Inputs used to measure the teacher's output scale: big enough that the std is within
# ~1 % of its true value, small enough to stay fast for wide teachers.
_TEACHER_CALIBRATION_SAMPLES = 16384
_TEACHER_BIAS_STD = 0.1


@dataclass
class Dataset:
    """Train/val/test splits as float32 CPU tensors, x ``[N, d_in]``, y ``[N, d_out]``.

    ``meta`` carries what is needed to interpret the tensors later: the target config,
    the source file and, for standardized data, the train mean/std of x and y (see
    `unscale_y`).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.y_train.shape[1])

    def to(self, device) -> Dataset:
        """A copy with every tensor on ``device`` (meta is shared, it holds no tensors)."""
        from torch import Tensor
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, **moved)

    def unscale_y(self, y: Tensor) -> Tensor:
        """Map predictions from the standardized scale back to the data's own units.

        Identity when the targets were not standardized (all synthetic targets).
        """
        if "y_mean" not in self.meta:
            return y
        import torch
        mean = torch.tensor(self.meta["y_mean"], dtype=y.dtype, device=y.device)
        std = torch.tensor(self.meta["y_std"], dtype=y.dtype, device=y.device)
        return y * std + mean


# --------------------------------------------------------------------------- configs


class _TargetBase(BaseModel):
    # No inf/NaN anywhere (``noise: .inf`` would poison every label).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seed: int = Field(0, ge=0)
    noise: float = Field(0.0, ge=0.0, description="std of Gaussian noise added to TRAIN targets only")

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data):
        """``n_train: true`` is not 1 (pydantic's lax int/float would read it so)."""
        if isinstance(data, dict):
            for k, v in data.items():
                f = cls.model_fields.get(k) if isinstance(k, str) else None
                if f is not None and f.annotation is not bool and (
                        isinstance(v, bool) or (isinstance(v, list) and any(isinstance(x, bool) for x in v))):
                    raise ValueError(f"{k}: must be a number, not a boolean (got {v!r})")
        return data


class _SyntheticBase(_TargetBase):
    n_train: int = Field(1024, ge=1)
    n_val: int = Field(256, ge=1)
    n_test: int = Field(1024, ge=1)


class TeacherTarget(_SyntheticBase):
    """A random dense MLP ``d_in → widths… → d_out``, outputs scaled to unit variance."""

    kind: Literal["teacher"] = "teacher"
    d_in: int = Field(4, ge=1)
    widths: list[Annotated[int, Field(ge=1)]] = [32, 32]
    activation: Literal["tanh", "relu", "gelu", "silu", "softplus", "sigmoid"] = "tanh"
    d_out: int = Field(1, ge=1)
    gain: float = Field(1.0, gt=0.0, le=100.0, allow_inf_nan=False,
                        description="scale of the teacher's hidden weights and biases: 1 keeps "
                                    "pre-activations O(1/√3) on [-1, 1] inputs (a nearly linear "
                                    "tanh teacher); larger gains make a rougher function that "
                                    "small students cannot fit, so capacity, not the optimiser, "
                                    "sets their error")


class SawtoothTarget(_SyntheticBase):
    """Triangle wave with ``teeth`` teeth over [-1, 1] in each coordinate.

    1-D: ``y = 2·s(t) − 1`` with ``t = (x+1)/2`` and ``s(t) = 1 − |2·frac(teeth·t) − 1|``,
    i.e. ``teeth`` rises 0→1→0, values in [-1, 1]. For ``teeth = 2^(k-1)`` this equals the
    k-fold composition of Telgarsky's tent map (rescaled).

    Multi-D: the *mean over coordinates* of the 1-D sawtooth. A sum of non-linear
    functions of different coordinates is not a ridge function g(vᵀx), so rank-1 nets
    cannot fit it, and each axis still carries ``teeth`` teeth (the depth-separating part).
    """

    kind: Literal["sawtooth"] = "sawtooth"
    d_in: int = Field(1, ge=1)
    teeth: int = Field(8, ge=1)


class NonridgeTarget(_SyntheticBase):
    """``product``: ``x1·x2`` (other coordinates are distractors).
    ``radial``: ``‖x‖² − d_in/3`` (the subtracted constant is its exact mean under the
    uniform input law, so the target is centred without depending on the sample).
    """

    kind: Literal["nonridge"] = "nonridge"
    function: Literal["product", "radial"] = "product"
    d_in: int = Field(2, ge=2)


class ParquetTarget(_TargetBase):
    """Columns of a Parquet file. Rows are shuffled with ``seed`` and split by fractions.

    ``path`` is resolved relative to the study file's folder. ``n_train`` optionally caps
    the training rows (for data-scaling sweeps; ``None`` = all). With ``standardize``,
    features and targets are scaled by TRAIN mean/std (stored in ``Dataset.meta``).
    ``noise`` is added to the train targets in the units of the returned tensors.
    ``sha256`` pins the file's content: a file that no longer matches is a `DataError`
    (a study must never silently mix two versions of its data).
    """

    kind: Literal["parquet"] = "parquet"
    path: str
    features: list[str] = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    standardize: bool = True
    n_train: int | None = Field(None, ge=1)
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="expected sha256 of the file; launch fills it in, so every worker trains on "
                    "the exact bytes the study was started with",
    )

    @model_validator(mode="after")
    def _check_columns_and_fractions(self) -> ParquetTarget:
        cols = self.features + self.targets
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        if dupes:
            raise ValueError(
                f"columns listed twice in features/targets: {dupes} "
                "(a target used as a feature would leak the answer)"
            )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves no training rows; it must be < 1"
            )
        return self


TargetSpec = Annotated[
    Union[TeacherTarget, SawtoothTarget, NonridgeTarget, ParquetTarget],
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- functions


def sawtooth(x: Tensor, teeth: int) -> Tensor:
    """The 1-D triangle wave of `SawtoothTarget`, elementwise on x in [-1, 1]."""
    import torch
    t = (x + 1) / 2
    frac = torch.remainder(teeth * t, 1.0)
    return 2 * (1 - torch.abs(2 * frac - 1)) - 1


def _generator(seed: int, stream: int) -> torch.Generator:
    """A torch generator for one independent stream of a seed."""
    import torch
    state = np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _uniform_inputs(n: int, d: int, seed: int, stream: int) -> Tensor:
    """n points uniform in [-1, 1]^d, float32 (2u − 1 is exact for float32 rand)."""
    import torch
    return torch.rand(n, d, generator=_generator(seed, stream)) * 2 - 1


def _teacher(target: TeacherTarget):
    """Build the teacher function (float64) and its calibration (mean, std) per output."""
    import torch

    from dlor_scale.models import activation_fn
    g = _generator(target.seed, _STREAM_WEIGHTS)
    sizes = [target.d_in, *target.widths, target.d_out]
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        gain = target.gain if i < len(sizes) - 2 else 1.0    # hidden layers only
        w = torch.randn(fan_in, fan_out, generator=g, dtype=torch.float64) * (gain / math.sqrt(fan_in))
        b = torch.randn(fan_out, generator=g, dtype=torch.float64) * (_TEACHER_BIAS_STD * gain)
        layers.append((w, b))
    act = activation_fn(target.activation)

    def raw(x: Tensor) -> Tensor:
        h = x.double()
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                h = act(h)
        return h

    calib = raw(_uniform_inputs(_TEACHER_CALIBRATION_SAMPLES, target.d_in, target.seed, _STREAM_CALIB))
    mean, std = calib.mean(0), calib.std(0)
    if bool((std < 1e-12).any()):
        raise DataError(
            f"teacher (seed={target.seed}, widths={target.widths}, activation={target.activation}) "
            "has a constant output; choose another seed or activation"
        )
    meta = {"teacher_out_mean": mean.tolist(), "teacher_out_std": std.tolist()}
    return (lambda x: (raw(x) - mean) / std), meta


def _synthetic_function(target: _SyntheticBase):
    """The target function f (float64 in, float64 out) and extra meta for a synthetic target."""
    if isinstance(target, TeacherTarget):
        return _teacher(target)
    if isinstance(target, SawtoothTarget):
        return (lambda x: sawtooth(x.double(), target.teeth).mean(1, keepdim=True)), {}
    if isinstance(target, NonridgeTarget):
        if target.function == "product":
            return (lambda x: (x[:, 0:1].double() * x[:, 1:2].double())), {}
        d = target.d_in
        return (lambda x: (x.double() ** 2).sum(1, keepdim=True) - d / 3), {}
    raise TypeError(f"not a synthetic target: {type(target).__name__}")


def _make_synthetic(target: _SyntheticBase) -> Dataset:
    f, meta = _synthetic_function(target)
    d_in = target.d_in
    splits = {}
    for split, n, stream in (
        ("train", target.n_train, _STREAM_TRAIN),
        ("val", target.n_val, _STREAM_VAL),
        ("test", target.n_test, _STREAM_TEST),
    ):
        x = _uniform_inputs(n, d_in, target.seed, stream)
        splits[split] = (x, f(x).float().contiguous())
    y_train = _add_train_noise(splits["train"][1], target)
    name = target.kind + (f"-{target.function}" if isinstance(target, NonridgeTarget) else "")
    return Dataset(
        name=name,
        x_train=splits["train"][0], y_train=y_train,
        x_val=splits["val"][0], y_val=splits["val"][1],
        x_test=splits["test"][0], y_test=splits["test"][1],
        meta={"target": target.model_dump(), "input_range": [-1.0, 1.0], **meta},
    )


def _add_train_noise(y: Tensor, target: _TargetBase) -> Tensor:
    """Label noise on the training targets only, so val/test measure the clean function."""
    if target.noise == 0:
        return y
    import torch
    eps = torch.randn(y.shape, generator=_generator(target.seed, _STREAM_NOISE))
    return y + target.noise * eps


# --------------------------------------------------------------------------- parquet

# Fewest training rows a study can use: the train std (standardisation, and the
# constant-column check) needs two distinct rows.
MIN_TRAIN_ROWS = 2

# sha256 of data files, keyed by (resolved path, size, mtime_ns): hashing a large file
# once per process is enough, and any rewrite changes size or mtime.
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def parquet_path(target: ParquetTarget, base_dir: Path | None) -> Path:
    """The file a Parquet target reads: ``~`` expanded, relative paths against ``base_dir``."""
    path = Path(target.path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def train_rows(target, base_dir: Path | None) -> int:
    """Training rows a target gives, without making its data (the plan sizes cohorts from
    it): ``n_train`` where the spec fixes it, else the Parquet file's row count (footer
    metadata only) split as `_split_sizes` splits it."""
    n = getattr(target, "n_train", None)
    if n is not None:
        return int(n)
    import pyarrow.parquet as pq
    path = parquet_path(target, base_dir)
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError) as e:   # pyarrow's errors derive from these
        raise DataError(f"{path}: cannot read the Parquet footer: {e}") from None
    return _split_sizes(path, rows, target)[0]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (cached by size + mtime); DataError if unreadable."""
    try:
        st = Path(path).stat()
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        if key not in _SHA_CACHE:
            import hashlib
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            _SHA_CACHE[key] = h.hexdigest()
        return _SHA_CACHE[key]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _read_parquet_columns(path: Path, cols: list[str]) -> dict[str, np.ndarray]:
    """Read ``cols`` as float64 arrays; every failure becomes a DataError naming file + column."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(f"{path}: file not found (needed for columns {cols})")
    if not path.is_file():
        raise DataError(f"{path}: not a file (needed for columns {cols}); point target.path at one .parquet file")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read as Parquet (needed for columns {cols}): {e}") from None

    missing = [c for c in cols if c not in schema.names]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found; available columns: {schema.names}")
    for c in cols:
        t = schema.field(c).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)
                or pa.types.is_boolean(t) or pa.types.is_decimal(t)):
            raise DataError(f"{path}: column {c!r} has non-numeric type {t}; only numeric columns can be used")

    try:
        table = pq.read_table(path, columns=cols)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: failed to read columns {cols}: {e}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: table is empty (0 rows) for columns {cols}")

    out = {}
    for c in cols:
        col = table.column(c)
        if col.null_count:
            raise DataError(f"{path}: column {c!r} has {col.null_count} null value(s) of {table.num_rows}")
        try:
            arr = pc.cast(col, pa.float64()).to_numpy()
        except pa.ArrowException as e:
            raise DataError(f"{path}: column {c!r} cannot be converted to float64: {e}") from None
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            raise DataError(
                f"{path}: column {c!r} has {bad} non-finite value(s) of {table.num_rows} "
                f"({n_nan} NaN, {bad - n_nan} inf)"
            )
        out[c] = arr
    return out


def _split_sizes(path: Path, n: int, target: ParquetTarget) -> tuple[int, int, int]:
    """(train, val, test) row counts; DataError when a split is too small to use."""
    cols = target.features + target.targets
    n_val, n_test = int(n * target.val_fraction), int(n * target.test_fraction)
    n_train = n - n_val - n_test
    sizes = (f"train={n_train}, val={n_val}, test={n_test} with val_fraction={target.val_fraction}, "
             f"test_fraction={target.test_fraction}")
    if min(n_val, n_test, n_train) == 0:
        raise DataError(f"{path}: {n} rows of columns {cols} give an empty split ({sizes}); "
                        "add rows or raise the fractions")
    if n_train < MIN_TRAIN_ROWS:
        raise DataError(f"{path}: {n} rows of columns {cols} leave {n_train} training row(s) ({sizes}); "
                        f"at least {MIN_TRAIN_ROWS} are needed")
    if target.n_train is not None and target.n_train > n_train:
        raise DataError(f"{path}: target.n_train = {target.n_train} but the file's {n} rows leave only "
                        f"{n_train} training rows ({sizes}); lower n_train or add rows")
    return n_train, n_val, n_test


def _parquet_splits(target: ParquetTarget, base_dir: Path | None) -> tuple[dict, dict]:
    """The file read, checked, shuffled, split and standardized, in numpy (no torch: the
    data check of `validate` runs this): ``({split: (x, y)} float64, meta)``."""
    path = parquet_path(target, base_dir)
    cols = target.features + target.targets
    data = _read_parquet_columns(path, cols)
    sha = file_sha256(path)
    if target.sha256 is not None and sha != target.sha256:
        raise DataError(
            f"{path}: the file changed: its sha256 is {sha[:12]}…, the study expects "
            f"{target.sha256[:12]}… (target.sha256); restore the original file, or start a new study "
            "(another name) on the new data"
        )
    x = np.stack([data[c] for c in target.features], axis=1)
    y = np.stack([data[c] for c in target.targets], axis=1)

    n = x.shape[0]
    _, n_val, n_test = _split_sizes(path, n, target)
    perm = np.random.default_rng(target.seed).permutation(n)
    idx = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
    if target.n_train is not None:
        idx["train"] = idx["train"][: target.n_train]

    # A column constant on the training rows carries no information (feature) or leaves
    # nothing to learn (target), and cannot be standardized: refuse it either way.
    for arr, names in ((x, target.features), (y, target.targets)):
        train = arr[idx["train"]]
        const = [(c, float(train[0, j])) for j, c in enumerate(names) if not train[:, j].std() > 0]
        if const:
            raise DataError(
                f"{path}: column(s) {[c for c, _ in const]} are constant on the {len(train)} training rows "
                f"(value(s) {[v for _, v in const]}); a constant column carries nothing to learn from "
                "or to predict: drop it from features/targets"
            )

    meta = {
        "target": target.model_dump(),
        "source": str(path),
        "sha256": sha,
        "n_rows": n,
        "n_train": len(idx["train"]), "n_val": n_val, "n_test": n_test,
        "features": list(target.features),
        "targets": list(target.targets),
        "standardized": target.standardize,
    }
    if target.standardize:
        for arr, key in ((x, "x"), (y, "y")):
            train = arr[idx["train"]]
            mean, std = train.mean(0), train.std(0)
            arr -= mean
            arr /= std
            meta[f"{key}_mean"], meta[f"{key}_std"] = mean.tolist(), std.tolist()

    return {k: (x[i], y[i]) for k, i in idx.items()}, meta


def _make_parquet(target: ParquetTarget, base_dir: Path | None) -> Dataset:
    import torch

    splits, meta = _parquet_splits(target, base_dir)

    def t(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (splits[k] for k in ("train", "val", "test"))
    return Dataset(
        name=f"parquet:{parquet_path(target, base_dir).stem}",
        x_train=t(x_train), y_train=_add_train_noise(t(y_train), target),
        x_val=t(x_val), y_val=t(y_val),
        x_test=t(x_test), y_test=t(y_test),
        meta=meta,
    )


def make_dataset(target: TargetSpec, base_dir: Path | None = None) -> Dataset:
    """Materialize a target as a `Dataset`; same config → bit-identical tensors.

    ``base_dir`` is the study file's folder: relative Parquet paths resolve against it.
    """
    if isinstance(target, ParquetTarget):
        return _make_parquet(target, base_dir)
    return _make_synthetic(target)


# --------------------------------------------------------------------------- data check + scale

# Summaries of checked Parquet data, keyed by (file identity, target config): `validate`,
# `launch --dry-run` and `launch` each check the data, and the second check of an
# unchanged file should not read it again.
_CHECK_CACHE: dict[tuple, dict] = {}


def data_summary(ds: Dataset) -> dict:
    """What a study records about its data (JSON-safe): source, content hash, split sizes and
    the **scale** (`scale`) that maps the standardized errors back to the target's units."""
    return _summary(ds.name, ds.meta, {"train": ds.x_train.shape, "val": ds.x_val.shape,
                                       "test": ds.x_test.shape}, ds.d_in, ds.d_out)


def _summary(name: str, m: dict, x_shapes: dict, d_in: int, d_out: int) -> dict:
    kind = m.get("target", {}).get("kind")
    out = {"kind": kind, "name": name,
           "n_train": int(x_shapes["train"][0]), "n_val": int(x_shapes["val"][0]),
           "n_test": int(x_shapes["test"][0]), "d_in": int(d_in), "d_out": int(d_out)}
    if kind == "parquet":
        out.update(source=str(Path(m["source"]).resolve()), sha256=m["sha256"], n_rows=m["n_rows"])
    out["scale"] = _scale_of(m, d_in, d_out)
    return out


def _parquet_summary(target: ParquetTarget, base_dir: Path | None) -> dict:
    """`data_summary` of a Parquet target's dataset, from the numpy splits (no torch)."""
    splits, meta = _parquet_splits(target, base_dir)
    x, y = splits["train"]
    return _summary(f"parquet:{parquet_path(target, base_dir).stem}", meta,
                    {k: v[0].shape for k, v in splits.items()}, x.shape[1], y.shape[1])


def _scale_of(meta: dict, d_in: int, d_out: int) -> dict:
    """Standardisation of x and y: errors in target units = standardized errors × y_std."""
    names_x = meta.get("features") or [f"x{i}" for i in range(d_in)]
    names_y = meta.get("targets") or [f"y{i}" for i in range(d_out)]
    standardized = bool(meta.get("standardized")) and "y_std" in meta
    return {
        "standardized": standardized,
        "features": list(names_x), "targets": list(names_y),
        "x_mean": meta.get("x_mean", [0.0] * d_in) if standardized else [0.0] * d_in,
        "x_std": meta.get("x_std", [1.0] * d_in) if standardized else [1.0] * d_in,
        "y_mean": meta.get("y_mean", [0.0] * d_out) if standardized else [0.0] * d_out,
        "y_std": meta.get("y_std", [1.0] * d_out) if standardized else [1.0] * d_out,
    }


def check_study_data(study, *, teacher: bool = True) -> dict:
    """Load and check a study's data before anything is created or started.

    Parquet: reads the file and builds the splits exactly as workers will, so every
    deterministic data problem (missing file, not Parquet, missing / non-numeric column,
    NaN/inf/null, empty, too few rows for the split, constant column) is a `DataError`
    (exit 2) here instead of a failed, retried Ray trial. Also refuses a ``batch_size``
    larger than the training split. Synthetic targets are defined by their config; only the
    teacher's calibration (the one way they can fail: a constant output) is run, and only
    with ``teacher=True``: it draws the teacher's weights with torch's generator, so it
    needs torch, and `validate` (which must answer without torch) leaves it to `launch`,
    which runs it before anything is created. Returns `data_summary`. Torch is imported
    only for that calibration: the Parquet check is numpy/pyarrow.
    """
    target, base_dir = study.target, study.base_dir
    if not isinstance(target, ParquetTarget):
        if teacher and isinstance(target, TeacherTarget):
            _teacher(target)
        d_in, d_out = int(target.d_in), int(getattr(target, "d_out", 1))
        return {"kind": target.kind, "n_train": target.n_train, "n_val": target.n_val,
                "n_test": target.n_test, "d_in": d_in, "d_out": d_out,
                "scale": _scale_of({}, d_in, d_out)}
    path = parquet_path(target, base_dir)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, target.model_dump_json())
    except OSError:
        key = None
    summary = _CHECK_CACHE.get(key) if key is not None else None
    if summary is None:
        summary = _parquet_summary(target, base_dir)
        if key is not None:
            _CHECK_CACHE[key] = summary
    summary = copy.deepcopy(summary)
    bs = getattr(study, "batch_size", None)
    if bs is not None and bs > summary["n_train"]:
        raise DataError(f"{path}: batch_size {bs} exceeds the {summary['n_train']} training rows; "
                        "lower batch_size or use null for full batch")
    return summary


"""The torch-free vocabulary of network shapes: families, activations, diagonals, layer
layouts and exact parameter counts.

Everything a study spec, a plan or the budget solver needs to *describe* a network lives
here, in pure Python, so `dlor-scale validate` / `schema` / `curves` answer without
importing torch. `dlor_scale.models` re-exports every name and adds the tensors
(initialisation, the stacked forward, `Member`); see its docstring for the layer maths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

FAMILIES = ("dense", "lowrank", "rank1", "dlor_deep", "dlor_wide")
ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "softplus", "sigmoid")
IO_KINDS = ("auto", "dense", "lowrank")


def parse_diag(diag: str) -> tuple[str, int]:
    """``'sparse:4'`` → ``('sparse', 4)``; other variants carry s = 0."""
    if diag in ("scalar", "full", "none"):
        return diag, 0
    if diag.startswith("sparse:"):
        try:
            s = int(diag.split(":", 1)[1])
        except ValueError:
            s = 0
        if s >= 1:
            return "sparse", s
    raise ValueError(f"unknown diagonal {diag!r}; allowed: scalar, full, none, sparse:<s≥1>")


def diag_count(diag: str, n: int) -> int:
    kind, s = parse_diag(diag)
    return {"scalar": 1, "full": n, "none": 0, "sparse": min(s, n)}[kind]


@dataclass(frozen=True)
class Layer:
    """One affine map of a network, before its activation."""

    kind: str  # dense | lowrank | dlor
    n_in: int
    n_out: int
    rank: int = 0
    diag: str = "none"

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-member parameter shapes, in a fixed order (init and flattening rely on it)."""
        shapes: dict[str, tuple[int, ...]] = {}
        if self.kind == "dense":
            shapes["W"] = (self.n_in, self.n_out)
        else:
            shapes["V"] = (self.n_in, self.rank)
            shapes["U"] = (self.rank, self.n_out)
            if self.kind == "dlor":
                nd = diag_count(self.diag, self.n_in)
                if nd:
                    shapes["d"] = (nd,)
        shapes["b"] = (self.n_out,)
        return shapes


@dataclass(frozen=True)
class Counts:
    """Exact trainable-parameter breakdown of one member."""

    total: int
    dense: int
    lowrank: int
    diag: int
    bias: int

    def as_params(self) -> dict[str, int]:
        return {f"n_params_{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Shape:
    """Everything that fixes a member's tensor layout (cohort members share one Shape)."""

    family: str
    d_in: int
    d_out: int
    width: int
    depth: int
    rank: int = 1
    branches: int = 1
    diag: str = "none"
    activation: str = "tanh"
    io: str = "auto"
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; allowed: {', '.join(FAMILIES)}")
        if self.io not in IO_KINDS:
            raise ValueError(f"unknown io {self.io!r}; allowed: {', '.join(IO_KINDS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}")
        parse_diag(self.diag)
        for name in ("d_in", "d_out", "width", "rank", "branches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise ValueError(f"depth must be ≥ 0, got {self.depth}")
        if self.family == "rank1" and self.rank != 1:
            object.__setattr__(self, "rank", 1)

    @property
    def io_kind(self) -> str:
        """Input/output layer kind: lowrank for the pure low-rank families, else dense."""
        if self.io != "auto":
            return self.io
        return "lowrank" if self.family in ("lowrank", "rank1") else "dense"

    def layers(self) -> list[Layer]:
        n, r = self.width, self.rank
        io = self.io_kind
        first = Layer("dense", self.d_in, n) if io == "dense" else Layer("lowrank", self.d_in, n, r)
        if self.family == "dense":
            hidden = Layer("dense", n, n)
        elif self.family in ("lowrank", "rank1"):
            hidden = Layer("lowrank", n, n, r)
        elif self.family == "dlor_deep":
            hidden = Layer("dlor", n, n, r, self.diag)
        else:  # dlor_wide: K parallel rank-r branches summed = one rank-K·r factor pair
            hidden = Layer("dlor", n, n, r * self.branches, self.diag)
        last = Layer("dense", n, self.d_out) if io == "dense" else Layer("lowrank", n, self.d_out, r)
        return [first, *([hidden] * self.depth), last]

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        out = {}
        for i, layer in enumerate(self.layers()):
            for name, shp in layer.tensor_shapes().items():
                out[f"l{i}.{name}"] = shp
        return out

    def describe(self) -> dict:
        """Flat dict for logging (MLflow params, plan tables)."""
        return {
            "family": self.family, "d_in": self.d_in, "d_out": self.d_out,
            "width": self.width, "depth": self.depth, "rank": self.rank,
            "branches": self.branches, "diag": self.diag,
            "activation": self.activation, "io": self.io_kind,
        }

    def label(self) -> str:
        return f"{self.family}-w{self.width}-L{self.depth}-r{self.rank}-K{self.branches}-{self.diag}"

    def with_(self, **kw) -> "Shape":
        return replace(self, **kw)


def count_params(shape: Shape) -> Counts:
    """Closed-form parameter count (never instantiates tensors)."""
    dense = lowrank = diag = bias = 0
    for layer in shape.layers():
        bias += layer.n_out
        if layer.kind == "dense":
            dense += layer.n_in * layer.n_out
        else:
            lowrank += layer.rank * (layer.n_in + layer.n_out)
            if layer.kind == "dlor":
                diag += diag_count(layer.diag, layer.n_in)
    return Counts(dense + lowrank + diag + bias, dense, lowrank, diag, bias)

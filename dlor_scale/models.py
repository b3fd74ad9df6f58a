"""Model families as *stacked* functional networks with exact parameter counts.

Why functional and stacked: the unit of execution is a cohort of K members that share
one `Shape`. Every parameter is a tensor with a leading member axis ``[K, ...]`` so one
batched matmul serves the whole cohort. A `Shape` fully determines the tensor layout;
`count_params` gives the closed-form count, which tests check against ``numel``.

Layer kinds (math on row vectors, ``h`` is ``[B, n_in]``):

* ``dense``   ``y = h W + b``                      W ``[n_in, n_out]``
* ``lowrank`` ``y = (h V) U + b``                  V ``[n_in, r]``, U ``[r, n_out]``
* ``dlor``    ``y = d ⊙ h + (h V) U + b``          square only; d from the diagonal variant

Families (``width`` n, ``depth`` L hidden→hidden layers, activation after every layer
but the last):

* ``dense``      in → L × dense(n, n) → out
* ``lowrank``    in → L × lowrank(n, n, r) → out
* ``rank1``      ``lowrank`` with r = 1
* ``dlor_deep``  in → L × dlor(n, r, diag) → out       (multiplicative depth: L grows)
* ``dlor_wide``  in → L × [diag + Σ_k U_k V_kᵀ] → out  (additive width: K branches of
  rank r, i.e. rank K·r, grows with K at fixed L)

Diagonal variants: ``scalar`` (αI, 1 parameter), ``full`` (diag(d), n), ``sparse:s``
(s learned entries at evenly spaced positions), ``none``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The pure-python shape vocabulary lives in `shapes` (torch-free, for specs and plans);
# re-exported here so `from dlor_scale.models import Shape` keeps working.
from .shapes import (ACTIVATIONS, FAMILIES, IO_KINDS, Counts, Layer, Shape,  # noqa: F401
                     count_params, diag_count, parse_diag)


def activation_fn(name: str):
    """The torch function for an activation name (one place, so names stay in sync)."""
    fns = {
        "tanh": torch.tanh,
        "relu": torch.relu,
        "gelu": torch.nn.functional.gelu,
        "silu": torch.nn.functional.silu,
        "softplus": torch.nn.functional.softplus,
        "sigmoid": torch.sigmoid,
    }
    if name not in fns:
        raise ValueError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return fns[name]


def sparse_positions(s: int, n: int) -> torch.Tensor:
    """Evenly spaced diagonal positions for ``sparse:s`` (fixed, not learned)."""
    s = min(s, n)
    return torch.tensor([(i * n) // s for i in range(s)], dtype=torch.long)


# ----------------------------------------------------------------------------- init

#: Init of the DLoR hidden layers' ``U`` (see `init_member`): ``standard`` or ``identity``.
INIT_SCHEMES = ("standard", "identity")
DEFAULT_INIT = "identity"


def init_member(shape: Shape, seed: int, init_scale: float = 1.0,
                scheme: str | None = None) -> dict[str, torch.Tensor]:
    """One member's float32 parameters, a pure function of (shape, seed, init_scale, scheme).

    Drawn on the CPU from a private generator so a member's weights do not depend on
    which cohort slot or device it lands in (this is what makes refill exact).
    Scales keep activations O(1): dense/V ~ N(0, 1/n_in); U ~ N(0, 1/r)·scale so the
    low-rank path has variance ≈ scale²; diagonals start at 1 (identity, residual-like)
    and biases at 0.

    ``scheme="identity"`` (near-identity) divides the ``U`` of DLoR hidden layers
    (``dlor_deep``/``dlor_wide``) by √depth, so each factor starts as αI plus a
    perturbation of size scale/√L and the stack's product stays O(1) however deep;
    ``None`` means `DEFAULT_INIT`. Same draws either way (only a rescale), so the
    two schemes differ in exactly one thing. benchmarks/depth_trainability.py measures both.
    """
    scheme = DEFAULT_INIT if scheme is None else scheme
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; allowed: {', '.join(INIT_SCHEMES)}")
    dlor_u = 1.0 / math.sqrt(max(shape.depth, 1)) if scheme == "identity" else 1.0
    g = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(shape.layers()):
        for name, shp in layer.tensor_shapes().items():
            key = f"l{i}.{name}"
            if name == "W":
                t = torch.randn(shp, generator=g) * (init_scale / math.sqrt(layer.n_in))
            elif name == "V":
                t = torch.randn(shp, generator=g) / math.sqrt(layer.n_in)
            elif name == "U":
                u = dlor_u if layer.kind == "dlor" else 1.0
                t = torch.randn(shp, generator=g) * (init_scale * u / math.sqrt(layer.rank))
            elif name == "d":
                t = torch.ones(shp)
            else:
                t = torch.zeros(shp)
            out[key] = t
    return out


# ----------------------------------------------------------------------------- forward

def _diag_full(layer: Layer, d: torch.Tensor) -> torch.Tensor:
    """Expand a [K, nd] diagonal parameter to the [K, 1, n] multiplier of h."""
    kind, s = parse_diag(layer.diag)
    if kind == "scalar":
        return d.unsqueeze(1)  # [K,1,1] broadcasts over n
    if kind == "full":
        return d.unsqueeze(1)
    pos = sparse_positions(s, layer.n_in).to(d.device)
    full = d.new_zeros(d.shape[0], layer.n_in)
    full = full.index_copy(1, pos, d)
    return full.unsqueeze(1)


def forward(shape: Shape, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Stacked forward: params ``[K, ...]``, x ``[K, B, d_in]`` or shared ``[B, d_in]``.

    Returns ``[K, B, d_out]``. Members never mix: every op is batched over K.
    """
    layers = shape.layers()
    act = activation_fn(shape.activation)
    K = next(iter(params.values())).shape[0]
    h = x if x.dim() == 3 else x.unsqueeze(0).expand(K, *x.shape)
    for i, layer in enumerate(layers):
        b = params[f"l{i}.b"].unsqueeze(1)
        if layer.kind == "dense":
            z = torch.baddbmm(b, h, params[f"l{i}.W"])
        else:
            t = torch.bmm(h, params[f"l{i}.V"])
            z = torch.baddbmm(b, t, params[f"l{i}.U"])
            if layer.kind == "dlor" and f"l{i}.d" in params:
                z = torch.addcmul(z, _diag_full(layer, params[f"l{i}.d"]), h)
        h = act(z) if i < len(layers) - 1 else z
    return h


class Member(nn.Module):
    """A single network as a plain ``nn.Module`` (for reference training and export).

    Written with ordinary (unbatched) ops on purpose: the cohort equivalence test
    trains this with ``torch.optim.AdamW`` and compares against the stacked trainer.
    """

    def __init__(self, shape: Shape, params: dict[str, torch.Tensor]):
        super().__init__()
        self.shape = shape
        self.names = list(shape.tensor_shapes())
        self.p = nn.ParameterList([nn.Parameter(params[k].detach().clone()) for k in self.names])

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.named_tensors()
        layers = self.shape.layers()
        act = activation_fn(self.shape.activation)
        h = x
        for i, layer in enumerate(layers):
            if layer.kind == "dense":
                z = h @ p[f"l{i}.W"] + p[f"l{i}.b"]
            else:
                z = (h @ p[f"l{i}.V"]) @ p[f"l{i}.U"] + p[f"l{i}.b"]
                if layer.kind == "dlor" and f"l{i}.d" in p:
                    z = z + _diag_full(layer, p[f"l{i}.d"].unsqueeze(0))[0] * h
            h = act(z) if i < len(layers) - 1 else z
        return h

"""Analytic (no-training) half of the reproduction of arXiv 2605.05659.

Three things, each an explicit construction that is checked numerically:

1. **Structural correspondence** (paper §1, Fig. 1b, Figs 2c/3c): any full-rank n×n matrix
   is rebuilt *exactly* from DLoR pieces, either as a **product** of DLoR factors
   (``diag(d) + U Vᵀ`` / ``αI + u vᵀ``, rank 1; "deep") or as a **sum** of ⌈n/r⌉ rank-r
   terms with no diagonal at all ("wide").  See `multiplicative_factors`,
   `additive_terms`, `reconstruction_report`.
2. **Universal approximation as h → 0** (Theorems 5 = deep and 6 = wide, Figs 2a/2b and
   3a/3b; the 5 = deep, 6 = wide pairing is inferred from the order in which the paper
   cites them).  A dense teacher network is turned into a deep or a wide DLoR network
   with the Kidger–Lyons Taylor trick
   ``(σ(x0 + h z) − σ(x0)) / (h σ'(x0)) = z + O(h)``: every *linear* factor runs through
   a nonlinear layer fed an h-scaled input, and the affine decode is folded into the
   next layer's weights, so the network is an ordinary stack of σ-layers.  The error to
   the teacher is measured on sample points over an h grid and its log–log slope is
   fitted (≈ 1: the O(h) Taylor remainder).  See `build_deep`, `build_wide`, `h_sweep`.
3. **The rank-1 paradox** (Fig. 1a, Fig. 5): a network whose layers are all rank 1 can
   interpolate any N scalar data points exactly (`rank1_interpolant`), but it is a ridge
   function g(vᵀx) and so has an error floor on a non-ridge target such as x1·x2 that
   no number of parameters removes (`ridge_floor`, `rank1_param_sweep`); a rank-2
   network of 4 units goes far below that floor (`product_via_squares`).

Conventions: row vectors as in `models` (``y = h W + b``); factor lists are in *layer
order*, i.e. ``W = F_1 F_2 … F_k`` and ``h W = (((h F_1) F_2) … ) F_k``.  Linear algebra
is numpy float64, networks are torch float64.  Everything here is deterministic.

What the paper does not say (the readable text ends at the figure captions; REPRODUCTION.md
§ Choices lists every gap), and what is chosen here:

* Multiplicative route: SVD with Householder reflectors, ``W = H_1…H_{n-1} Σ' G_{n-1}…G_1``
  (2n−1 factors).  Chosen over LU (needs pivoting; the permutation is not I + rank-1)
  and over the general eigen-route ``Π(I + (λ_k−1) q_k p_kᵀ)`` (complex λ for a general
  real W, and error grows with cond(Q)).  Reflectors are orthogonal, so signals that pass
  through the near-linear layers keep their norm – this is what keeps the O(1/h)
  constants of part 2 harmless.  The symmetric eigen-route (``method="spectral"``, n
  factors I + (λ_k−1) q_k q_kᵀ, orthonormal q_k) is offered as the "spectral
  decomposition" of Fig. 2c.
* Expansion point x0 per activation (`DEFAULT_X0`): tanh/sigmoid use 0.5, not 0, because
  σ''(0) = 0 there makes the remainder O(h²) and would hide the generic O(h) rate the
  proofs track; ReLU uses x0 = 1 > 0 (its exactly linear region).
* Rectangular teacher layers (d_in → n, n → d_out) in the deep route are zero-padded to
  n×n and factored like the rest; the network's input/output layers are then a fixed
  inclusion/projection (a rectangular diagonal of min(n_in, n_out) entries).
* Deep chains are balanced (`_balance`): ‖W‖₂ is moved from the first to the last
  factor of each chain, so coded signals never grow inside a chain.
* Sawtooth teacher (Figs 2b/3b): its real nonlinearity stays ReLU; the swept σ is the
  activation of the near-linear layers (the part of the proof that must hold for
  general σ).  With a smooth σ the deep network then mixes activations, so it is
  evaluated by `DeepDLoR.forward`, not `models.forward`.
* Error norms: sup (max |·| over samples and outputs) and RMS, absolute; the teacher's
  RMS output is reported alongside for scale.  The slope is fitted on h ≤ 1e-2 (see
  `h_sweep`).
* Performance: thousands of tiny float64 ops; on shared CPUs ``torch.set_num_threads(1)``
  is much faster (intra-op threads only contend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..models import Shape, activation_fn, count_params, forward

DTYPE = torch.float64

#: Expansion point x0 of the Taylor trick per activation (see module docstring).
DEFAULT_X0 = {"tanh": 0.5, "sigmoid": 0.5, "softplus": 0.0, "silu": 0.0, "gelu": 0.0, "relu": 1.0}

#: Default h grid of the construction study (Figs 2a/3a): 1e-1 … 1e-4, half decades.
DEFAULT_HS = tuple(float(h) for h in np.logspace(-1, -4, 7))

__all__ = [
    "Factor", "multiplicative_factors", "additive_terms", "reconstruct_multiplicative",
    "reconstruct_additive", "multiplicative_params", "additive_params", "relative_error",
    "reconstruction_report",
    "Teacher", "mlp_teacher", "sawtooth_teacher", "taylor_coefficients",
    "DeepDLoR", "WideDLoR", "build_deep", "build_wide", "loglog_slope", "h_sweep",
    "rank1_interpolant", "ridge_error", "ridge_floor", "rank1_param_sweep",
    "product_via_squares",
]


# ============================================================================ 1. exact reconstruction

@dataclass(frozen=True)
class Factor:
    """One DLoR factor ``F = diag(d) + U Vᵀ`` (n×n), ``U, V ∈ ℝ^{n×r}``.

    ``diag="scalar"`` means d = α·1 (the αI + uvᵀ form quoted by arxivlens, 1 diagonal
    parameter); ``diag="full"`` is a free diagonal (n parameters).  r may be 0 (a pure
    diagonal factor, e.g. the Σ of an SVD).
    """

    d: np.ndarray
    U: np.ndarray
    V: np.ndarray
    diag: str = "full"

    @property
    def n(self) -> int:
        return int(self.d.shape[0])

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    def matrix(self) -> np.ndarray:
        return np.diag(self.d) + self.U @ self.V.T

    def right_apply(self, X: np.ndarray) -> np.ndarray:
        """``X F`` in O(n·r) per row (never forms F)."""
        return X * self.d + (X @ self.U) @ self.V.T

    def n_params(self) -> int:
        """Weights of this factor (no bias): diagonal + 2·n·r."""
        return (1 if self.diag == "scalar" else self.n) + 2 * self.n * self.rank


def _reflector(w: np.ndarray) -> Factor:
    """Householder reflector H = I − 2wwᵀ (‖w‖ = 1, or w = 0 for I) as αI + u vᵀ."""
    return Factor(np.ones(w.shape[0]), (-2.0 * w)[:, None], w[:, None].copy(), "scalar")


def _householder_orthogonal(Q: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Write an orthogonal Q as ``H_1 H_2 … H_{n-1} diag(signs)``.

    Householder QR of Q itself: ``H_{n-1}…H_1 Q = R`` is upper triangular *and*
    orthogonal, hence diag(±1) (up to rounding); each H_k is its own inverse.
    """
    n = Q.shape[0]
    A = np.array(Q, dtype=np.float64, copy=True)
    ws: list[np.ndarray] = []
    for k in range(n - 1):
        x = A[k:, k]
        alpha = float(np.linalg.norm(x))
        w = np.zeros(n)
        if alpha > 0.0:
            v = x.copy()
            v[0] += math.copysign(alpha, x[0])
            nv = float(np.linalg.norm(v))
            if nv > 0.0:
                w[k:] = v / nv
                A -= 2.0 * np.outer(w, w @ A)
        ws.append(w)
    signs = np.sign(np.diag(A))
    signs[signs == 0] = 1.0
    return ws, signs


def _as_square(W) -> np.ndarray:
    W = np.asarray(W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"multiplicative_factors needs a square matrix, got shape {W.shape}")
    return W


def multiplicative_factors(W, method: str = "householder", diag: str = "full") -> list[Factor]:
    """Exact DLoR product ``W = F_1 F_2 … F_k`` of an n×n matrix (Fig. 1b "deep"; Fig. 2c).

    Why a diagonal is needed: a product of pure low-rank matrices has rank ≤ r, so the
    deep route cannot reach a full-rank W without the identity/diagonal part – the
    reason the paper's Fig. 1b says the multiplicative route "necessitates" it.

    ``method="householder"`` (any real W, default): ``W = U Σ Vᵀ``; U and V are each a
    product of n−1 reflectors I − 2wwᵀ (each αI + u vᵀ with α = 1, r = 1) times a sign
    diagonal, the signs are folded into Σ.  Result: ``H_1…H_{n-1} · Σ' · G_{n-1}…G_1``.
    ``diag="full"`` keeps Σ' as one diag(d) factor (2n−1 factors); ``diag="scalar"``
    splits it into n factors ``I + (σ_k − 1) e_k e_kᵀ`` so every factor is αI + uvᵀ
    (3n−2 factors).  Backward stable: all factors but one are orthogonal.

    ``method="spectral"`` (symmetric W only): ``W = Π_k (I + (λ_k − 1) q_k q_kᵀ)`` with
    orthonormal eigenvectors – n commuting factors of the form αI + uvᵀ, the "deep
    network spectral decomposition" of Fig. 2c.
    """
    W = _as_square(W)
    n = W.shape[0]
    if diag not in ("full", "scalar"):
        raise ValueError(f"diag must be 'full' or 'scalar', got {diag!r}")
    if method == "spectral":
        scale = max(float(np.abs(W).max()), 1e-300)
        if float(np.abs(W - W.T).max()) > 1e-12 * scale:
            raise ValueError("method='spectral' needs a symmetric matrix; use method='householder'")
        lam, Q = np.linalg.eigh((W + W.T) / 2.0)
        return [Factor(np.ones(n), ((lam[k] - 1.0) * Q[:, k])[:, None], Q[:, k][:, None].copy(), "scalar")
                for k in range(n)]
    if method != "householder":
        raise ValueError(f"unknown method {method!r}; allowed: householder, spectral")
    Us, S, Vt = np.linalg.svd(W)
    ws_u, sg_u = _householder_orthogonal(Us)
    ws_v, sg_v = _householder_orthogonal(Vt.T)
    center = sg_u * S * sg_v
    if diag == "full":
        mid = [Factor(center, np.zeros((n, 0)), np.zeros((n, 0)), "full")]
    else:
        eye = np.eye(n)
        mid = [Factor(np.ones(n), ((center[k] - 1.0) * eye[:, k])[:, None], eye[:, k][:, None].copy(), "scalar")
               for k in range(n)]
    return [_reflector(w) for w in ws_u] + mid + [_reflector(w) for w in reversed(ws_v)]


def additive_terms(W, rank: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact sum ``W = Σ_k U_k V_kᵀ`` of rank-r terms, **no diagonal** (Fig. 1b "wide"; Fig. 3c).

    From the SVD, singular triplets are grouped r at a time and split evenly
    (``U_k = u·√σ``, ``V_k = v·√σ``) so both sides have the same scale.  A full-rank
    n×n W gives ⌈n/r⌉ terms.  Choice: singular values below ``max(m,n)·eps·σ_max`` are
    dropped (a rank-deficient W needs fewer terms), and the last block is zero-padded to
    r columns so every branch has the same shape (the count is then ⌈rank/r⌉·r·(m+n)).
    Works for rectangular W (m×n): U_k is m×r, V_k is n×r.
    """
    if rank < 1:
        raise ValueError(f"rank must be ≥ 1, got {rank}")
    W = np.asarray(W.detach().cpu().numpy() if isinstance(W, torch.Tensor) else W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"additive_terms needs a matrix, got shape {W.shape}")
    m, n = W.shape
    Us, S, Vt = np.linalg.svd(W, full_matrices=False)
    tol = max(m, n) * np.finfo(np.float64).eps * (S[0] if S.size else 0.0)
    k_eff = int(np.sum(S > tol))
    terms = []
    for start in range(0, k_eff, rank):
        idx = slice(start, min(start + rank, k_eff))
        sq = np.sqrt(S[idx])
        Uk, Vk = np.zeros((m, rank)), np.zeros((n, rank))
        w = idx.stop - idx.start
        Uk[:, :w] = Us[:, idx] * sq
        Vk[:, :w] = Vt[idx].T * sq
        terms.append((Uk, Vk))
    return terms


def reconstruct_multiplicative(factors: list[Factor]) -> np.ndarray:
    """``F_1 F_2 … F_k`` (applied factor by factor, as the deep network does)."""
    out = np.eye(factors[0].n)
    for f in factors:
        out = f.right_apply(out)
    return out


def reconstruct_additive(terms: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``Σ_k U_k V_kᵀ``."""
    return sum(U @ V.T for U, V in terms)


def multiplicative_params(factors: list[Factor]) -> int:
    """Weights of the product route, each factor counted as a free DLoR factor."""
    return int(sum(f.n_params() for f in factors))


def additive_params(terms: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Weights of the sum route: r·(m + n) per term."""
    return int(sum(U.size + V.size for U, V in terms))


def relative_error(W, W_hat) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F."""
    W, W_hat = np.asarray(W, dtype=np.float64), np.asarray(W_hat, dtype=np.float64)
    return float(np.linalg.norm(W - W_hat) / max(np.linalg.norm(W), 1e-300))


def reconstruction_report(n: int, seed: int = 0, rank: int = 1) -> dict:
    """Both exact routes on a random Gaussian n×n matrix (paper §1: "any full-rank linear map").

    Returns relative Frobenius errors, factor/term counts and weight counts of: the
    Householder product with a full Σ factor (``multiplicative``), with Σ split into
    αI + uvᵀ factors (``multiplicative_scalar``), the symmetric spectral product on
    ``(W + Wᵀ)/2`` (``spectral``, Fig. 2c) and the rank-r sum (``additive``, Fig. 3c),
    next to the dense cost n².  Both routes cost Θ(n²) for one matrix (notes §1.6): the
    paper's depth advantage is about expressivity per parameter, not this.
    """
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n)) / math.sqrt(n)
    Wsym = (W + W.T) / 2.0
    out: dict = {"n": n, "seed": seed, "rank": rank, "dense_params": n * n,
                 "cond": float(np.linalg.cond(W))}
    for key, M, kw in (("multiplicative", W, {"diag": "full"}),
                       ("multiplicative_scalar", W, {"diag": "scalar"}),
                       ("spectral", Wsym, {"method": "spectral"})):
        fs = multiplicative_factors(M, **kw)
        out[key] = {"factors": len(fs), "params": multiplicative_params(fs),
                    "rel_error": relative_error(M, reconstruct_multiplicative(fs)),
                    "max_rank": max(f.rank for f in fs)}
    terms = additive_terms(W, rank)
    out["additive"] = {"terms": len(terms), "params": additive_params(terms),
                       "rel_error": relative_error(W, reconstruct_additive(terms))}
    return out


# ============================================================================ 2. h → 0 constructions

@dataclass
class Teacher:
    """A dense teacher network, stored as a `models` ``dense`` Shape + params ([1, ...] float64).

    ``domain`` is the input box the error is measured on.
    """

    name: str
    shape: Shape
    params: dict[str, torch.Tensor]
    domain: tuple[float, float]

    @property
    def activation(self) -> str:
        return self.shape.activation

    @property
    def n_layers(self) -> int:
        return len(self.shape.layers())

    @property
    def weights(self) -> list[np.ndarray]:
        return [self.params[f"l{i}.W"][0].numpy() for i in range(self.n_layers)]

    @property
    def biases(self) -> list[np.ndarray]:
        return [self.params[f"l{i}.b"][0].numpy() for i in range(self.n_layers)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return forward(self.shape, self.params, x.to(DTYPE))[0]

    def samples(self, n: int, seed: int = 0) -> torch.Tensor:
        """Evaluation points: a uniform grid in 1-D, uniform random points otherwise."""
        lo, hi = self.domain
        if self.shape.d_in == 1:
            return torch.linspace(lo, hi, n, dtype=DTYPE)[:, None]
        g = torch.Generator().manual_seed(int(seed))
        return lo + (hi - lo) * torch.rand(n, self.shape.d_in, generator=g, dtype=DTYPE)


def mlp_teacher(d_in: int = 4, width: int = 16, depth: int = 1, d_out: int = 1,
                activation: str = "tanh", seed: int = 0, bias_scale: float = 0.1) -> Teacher:
    """Random dense MLP teacher (Figs 2a/3a): in → (depth+1) hidden layers of width n → out.

    Choice (paper silent): W ~ N(0, 1/n_in), b ~ N(0, bias_scale²), inputs uniform on
    [−1, 1]^{d_in}.  Defaults d_in = 4, n = 16, two hidden layers, scalar output.
    """
    shape = Shape("dense", d_in, d_out, width, depth, activation=activation, io="dense")
    g = torch.Generator().manual_seed(int(seed))
    params = {}
    for i, layer in enumerate(shape.layers()):
        params[f"l{i}.W"] = (torch.randn(layer.n_in, layer.n_out, generator=g, dtype=DTYPE)
                             / math.sqrt(layer.n_in))[None]
        params[f"l{i}.b"] = (bias_scale * torch.randn(layer.n_out, generator=g, dtype=DTYPE))[None]
    return Teacher("mlp", shape, params, (-1.0, 1.0))


def sawtooth_teacher(k: int = 4) -> Teacher:
    """Telgarsky's sawtooth Δ^k on [0, 1] as a width-2 ReLU MLP (Figs 2b/3b).

    Tent map Δ(x) = 2·min(x, 1−x) = 2·relu(x) − 4·relu(x − ½); composing k times gives
    2^{k−1} teeth.  Layer 0: x ↦ relu([x, x − ½]); each hidden layer maps the pair
    (a, b) to relu([Δ, Δ − ½]) with Δ = 2a − 4b (weights [[2, 2], [−4, −4]]); output 2a − 4b.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    shape = Shape("dense", 1, 1, 2, k - 1, activation="relu", io="dense")
    half = torch.tensor([0.0, -0.5], dtype=DTYPE)
    params = {"l0.W": torch.tensor([[1.0, 1.0]], dtype=DTYPE)[None], "l0.b": half[None].clone()}
    for i in range(1, k):
        params[f"l{i}.W"] = torch.tensor([[2.0, 2.0], [-4.0, -4.0]], dtype=DTYPE)[None]
        params[f"l{i}.b"] = half[None].clone()
    params[f"l{k}.W"] = torch.tensor([[2.0], [-4.0]], dtype=DTYPE)[None]
    params[f"l{k}.b"] = torch.zeros(1, dtype=DTYPE)[None]
    return Teacher(f"sawtooth{k}", shape, params, (0.0, 1.0))


def taylor_coefficients(activation: str, x0: float) -> tuple[float, float, float]:
    """(σ(x0), σ'(x0), σ''(x0)) by float64 autograd; σ'(x0) must be non-zero."""
    act = activation_fn(activation)
    x = torch.tensor(float(x0), dtype=DTYPE, requires_grad=True)
    y = act(x)
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    s2 = 0.0
    if g.requires_grad:
        (g2,) = torch.autograd.grad(g, x, allow_unused=True)
        s2 = 0.0 if g2 is None else float(g2)
    s1 = float(g.detach())
    if abs(s1) < 1e-12:
        raise ValueError(f"σ'({x0}) = 0 for {activation}: the Taylor trick needs σ'(x0) ≠ 0")
    return float(y.detach()), s1, s2


@dataclass
class DeepDLoR:
    """A deep (multiplicative) DLoR network: inclusion → L DLoR layers → projection.

    Every layer is ``act(d ⊙ h + (h V) U + b)`` exactly as in `models`.  ``acts[i]`` is
    the near-linear σ for coded layers and the teacher's activation where the teacher
    applies its nonlinearity.  When the two coincide (MLP teacher) `to_shape` exports a
    ``dlor_deep`` `Shape` + params that `models.forward` evaluates; with a ReLU sawtooth
    teacher and a smooth σ the activations differ per layer, which a `Shape` (one
    activation for all layers) cannot express, so `forward` here is the evaluator.
    """

    d_in: int
    d_out: int
    width: int
    activation: str
    h: float
    x0: float
    embed_W: torch.Tensor
    embed_b: torch.Tensor
    layers: list[dict]
    proj_W: torch.Tensor
    proj_b: torch.Tensor
    n_params: int
    counts: dict = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = activation_fn(self.activation)
        h = act(x.to(DTYPE) @ self.embed_W + self.embed_b)
        for L in self.layers:
            h = activation_fn(L["act"])(h * L["d"] + (h @ L["V"]) @ L["U"] + L["b"])
        return h @ self.proj_W + self.proj_b

    __call__ = forward

    def to_shape(self) -> tuple[Shape, dict[str, torch.Tensor]]:
        """``(Shape("dlor_deep", …), params)`` with a member axis of 1, for `models.forward`."""
        if any(L["act"] != self.activation for L in self.layers):
            raise ValueError("layers use different activations; a Shape has one activation – use .forward")
        scalar = all(L["diag"] == "scalar" for L in self.layers)
        diag = "scalar" if scalar else "full"
        shape = Shape("dlor_deep", self.d_in, self.d_out, self.width, self.depth, rank=1,
                      diag=diag, activation=self.activation, io="dense")
        p = {"l0.W": self.embed_W[None], "l0.b": self.embed_b[None]}
        n = self.width
        for i, L in enumerate(self.layers, start=1):
            V = torch.zeros(n, 1, dtype=DTYPE)
            U = torch.zeros(1, n, dtype=DTYPE)
            if L["V"].shape[1]:
                V, U = L["V"], L["U"]
            p[f"l{i}.V"], p[f"l{i}.U"] = V[None], U[None]
            p[f"l{i}.d"] = (L["d"][:1] if scalar else L["d"])[None]
            p[f"l{i}.b"] = L["b"][None]
        p[f"l{self.depth + 1}.W"] = self.proj_W[None]
        p[f"l{self.depth + 1}.b"] = self.proj_b[None]
        return shape, p


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE)


def _balance(factors: list[Factor], scale: float) -> list[Factor]:
    """Move ‖W‖₂ from inside the chain to its end: F_1/s · F_2 … F_{k-1} · s·F_k.

    Applied only when s > 1: every partial product F_1…F_j (j < k) then has spectral
    norm ≤ 1 (reflectors are orthogonal, diagonal entries are 1/s or σ_i/s), so the
    coded signal u never grows inside a chain and the Taylor remainder ~h·|u|² stays
    small.  For s ≤ 1 the unbalanced chain already has that property.
    """
    if len(factors) < 2 or scale <= 1.0:
        return factors
    f1, fk = factors[0], factors[-1]
    return [Factor(f1.d / scale, f1.U / scale, f1.V, f1.diag), *factors[1:-1],
            Factor(fk.d * scale, fk.U * scale, fk.V, fk.diag)]


def build_deep(teacher: Teacher, activation: str | None = None, h: float = 1e-2,
               x0: float | None = None, diag: str = "full") -> DeepDLoR:
    """Deep DLoR network that approximates the teacher to O(h) (Theorem 5, Figs 2a/2b).

    Each teacher weight matrix (the first zero-padded to n×n rows, the last to n×n
    columns) is factored exactly by `multiplicative_factors`, one factor per layer.
    A signal between factors is *coded*: a = σ(x0 + h·u), and u ≈ (a − σ(x0))/(h σ'(x0)).
    A factor layer decodes its input (if coded), applies F, and either re-encodes
    (near-linear σ layer) or, after the last factor of a teacher matrix, adds the
    teacher's bias and applies the teacher's real nonlinearity.  Decode/encode are affine,
    so they fold into the layer: with input (α_in, β_in) and output (α_out, β_out) maps,
    ``pre = c·(a F) + α_out β_in·(1ᵀF) + β_out``, c = α_out α_in.  Coded→coded layers get
    c = 1/σ'(x0) – h cancels; only entry (×h) and exit (×1/h) layers carry h.
    """
    sigma = activation or teacher.activation
    x0 = DEFAULT_X0.get(sigma, 0.0) if x0 is None else float(x0)
    s0, s1, _ = taylor_coefficients(sigma, x0)
    Ws, bs = teacher.weights, teacher.biases
    n, d_in, d_out = teacher.shape.width, teacher.shape.d_in, teacher.shape.d_out
    if d_in > n or d_out > n:
        raise ValueError("build_deep pads the input/output layers to n×n: needs d_in, d_out ≤ width")
    P0 = np.zeros((n, n))
    P0[:d_in] = Ws[0]
    Pout = np.zeros((n, n))
    Pout[:, :d_out] = Ws[-1]
    mats = [P0, *Ws[1:-1], Pout]
    coded = (1.0 / (h * s1), -s0 / (h * s1))
    layers: list[dict] = []
    per_matrix: list[int] = []
    n_params = (d_in + n) + (d_out + d_out)  # inclusion (rectangular diagonal) + bias; projection + bias
    for j, M in enumerate(mats):
        factors = _balance(multiplicative_factors(M, diag=diag), float(np.linalg.norm(M, 2)))
        per_matrix.append(len(factors))
        last_matrix = j == len(mats) - 1
        for k, F in enumerate(factors):
            a_in, b_in = coded if (k > 0 or j == 0) else (1.0, 0.0)
            if k == len(factors) - 1 and not last_matrix:
                a_out, b_out, act = 1.0, bs[j], teacher.activation  # real nonlinearity
            else:
                a_out, b_out, act = h, x0 * np.ones(n), sigma  # near-linear (coded) layer
            c = a_out * a_in
            oneF = F.d + F.U.sum(0) @ F.V.T
            layers.append({"d": _t(c * F.d), "V": _t(c * F.U), "U": _t(F.V.T.copy()),
                           "b": _t(a_out * b_in * oneF + b_out), "act": act, "diag": F.diag})
            n_params += F.n_params() + n
    E_in, E_out = np.eye(d_in, n), np.eye(n, d_out)
    return DeepDLoR(
        d_in, d_out, n, sigma, h, x0,
        embed_W=_t(h * E_in), embed_b=_t(x0 * np.ones(n)), layers=layers,
        proj_W=_t(E_out / (h * s1)), proj_b=_t(bs[-1] - s0 / (h * s1) * np.ones(d_out)),
        n_params=int(n_params),
        counts={"factors_per_matrix": per_matrix},
    )


@dataclass
class WideDLoR:
    """A wide (additive) DLoR network: per teacher layer, K parallel rank-r branches.

    Block input t; branch k computes ``a_k = σ(t A_k B_k + x0)`` (pure low-rank weights,
    A_k = h·U_k, no diagonal) with its *own* near-linear activation; the block output is
    ``act(γ·Σ_k a_k + c)`` with γ = 1/(h σ'(x0)) and c = b − K·σ(x0)/(h σ'(x0)).
    `models`' ``dlor_wide`` family sums its branches *before* one activation (so the sum
    of SVD terms would be exact and h would play no role); Theorem 6's construction needs
    an activation inside each branch, which no `Shape` expresses – hence this evaluator.
    """

    activation: str
    h: float
    x0: float
    blocks: list[dict]
    n_params: int
    counts: dict = field(default_factory=dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sig = activation_fn(self.activation)
        t = x.to(DTYPE)
        for blk in self.blocks:
            z = sig(torch.einsum("bi,kir,kro->kbo", t, blk["A"], blk["B"]) + self.x0).sum(0)
            z = blk["gamma"] * z + blk["c"]
            t = activation_fn(blk["act"])(z) if blk["act"] else z
        return t

    __call__ = forward


def build_wide(teacher: Teacher, activation: str | None = None, h: float = 1e-2,
               x0: float | None = None, rank: int = 1) -> WideDLoR:
    """Wide DLoR network that approximates the teacher to O(h) (Theorem 6, Figs 3a/3b).

    Each teacher matrix is split exactly by `additive_terms` into ⌈rank(W)/r⌉ rank-r
    terms; each term becomes a branch with its own near-linear activation, and the decoded
    branch outputs sum to t W + O(h) before the teacher's bias and real nonlinearity.
    Rectangular layers need no padding here (U_k is n_in×r, V_k is n_out×r).
    Weight count per branch: r(n_in + n_out) + n_out (its bias x0·1); per block n_out + 1.
    """
    sigma = activation or teacher.activation
    x0 = DEFAULT_X0.get(sigma, 0.0) if x0 is None else float(x0)
    s0, s1, _ = taylor_coefficients(sigma, x0)
    Ws, bs = teacher.weights, teacher.biases
    blocks, n_params, branches = [], 0, []
    for j, W in enumerate(Ws):
        terms = additive_terms(W, rank)
        K = len(terms)
        A = _t(np.stack([h * U for U, _ in terms]))
        B = _t(np.stack([V.T for _, V in terms]))
        act = teacher.activation if j < len(Ws) - 1 else None
        blocks.append({"A": A, "B": B, "gamma": 1.0 / (h * s1), "c": _t(bs[j] - K * s0 / (h * s1)), "act": act})
        n_in, n_out = W.shape
        n_params += K * (rank * (n_in + n_out) + n_out) + n_out + 1
        branches.append(K)
    return WideDLoR(sigma, h, x0, blocks, int(n_params), {"branches_per_matrix": branches})


def loglog_slope(hs, errors, noise=1e-9) -> tuple[float, int]:
    """Least-squares slope of log10(error) vs log10(h) over points with error > noise.

    ``noise`` is a scalar or one value per h.  Returns (slope, points used); slope is NaN
    with fewer than two such points (an exact construction, e.g. ReLU with x0 > 0).
    """
    hs, errors = np.asarray(hs, float), np.asarray(errors, float)
    keep = errors > np.broadcast_to(np.asarray(noise, float), errors.shape)
    if keep.sum() < 2:
        return float("nan"), int(keep.sum())
    return float(np.polyfit(np.log10(hs[keep]), np.log10(errors[keep]), 1)[0]), int(keep.sum())


def h_sweep(teacher: str = "mlp", route: str = "deep", activation: str = "tanh", hs=DEFAULT_HS,
            seed: int = 0, *, x0: float | None = None, rank: int = 1, diag: str = "full",
            fit_max_h: float = 1e-2,
            n_samples: int = 1024, d_in: int = 4, width: int = 16, depth: int = 1,
            teeth_k: int = 4) -> dict:
    """Approximation error of the deep/wide DLoR construction vs h (Figs 2a/2b, 3a/3b).

    ``teacher="mlp"``: a random dense MLP with activation σ = ``activation`` (Figs 2a/3a).
    ``teacher="sawtooth"``: Telgarsky's ReLU sawtooth Δ^k (Figs 2b/3b); its real
    nonlinearity stays ReLU and ``activation`` is the σ of the near-linear layers (the
    Taylor trick is what must work for general σ).  Errors are sup and RMS over
    ``n_samples`` points (random in [−1,1]^{d_in}, or a grid on [0,1] for the sawtooth).
    Deep MLP networks are evaluated through `models.forward` (``evaluator`` says which).

    Returns ``dict(hs, errors (sup), rms, slope (sup), slope_rms, slope_all, exact,
    params, params_dense, …)``.  ``slope``/``slope_rms`` are fitted over the asymptotic
    tail h ≤ ``fit_max_h`` (default 1e-2); ``slope_all`` over the whole grid.  Why a
    tail: the deep chain has ≈2n−1 σ-layers per teacher matrix and the remainder
    accumulates like depth·h·|u|², so at h ≳ 3e-2 the deep network is not yet
    near-linear (errors O(1)) and the full-grid slope is biased (0.9–1.3 over seeds);
    below 1e-2 the local slopes are 1.00.  Expect slope ≈ 1 for smooth σ (O(h)
    remainder); ReLU with x0 > 0 is exact once x0 + h·u > 0 on all coded signals, so
    its errors are rounding (≲1e-9, growing like eps/h; counted as noise below
    1e-12·max(1, teacher_rms)/h), ``exact`` is True and the slope is NaN.
    """
    if teacher == "mlp":
        T = mlp_teacher(d_in, width, depth, 1, activation, seed)
    elif teacher == "sawtooth":
        T = sawtooth_teacher(teeth_k)
    else:
        raise ValueError(f"unknown teacher {teacher!r}; allowed: mlp, sawtooth")
    if route not in ("deep", "wide"):
        raise ValueError(f"unknown route {route!r}; allowed: deep, wide")
    x = T.samples(n_samples, seed + 1)
    y_t = T(x)
    sup, rms, params, info, evaluator = [], [], None, {}, "construct"
    for h in hs:
        if route == "deep":
            net = build_deep(T, activation, h, x0, diag)
            if activation == T.activation:
                shape, p = net.to_shape()
                y = forward(shape, p, x)[0]
                evaluator = "models.forward"
                info = {"depth": net.depth, "params_container": count_params(shape).total}
            else:
                y = net(x)
                info = {"depth": net.depth}
            info["factors_per_matrix"] = net.counts["factors_per_matrix"]
        else:
            net = build_wide(T, activation, h, x0, rank)
            y = net(x)
            info = {"branches_per_matrix": net.counts["branches_per_matrix"], "rank": rank}
        err = (y - y_t).abs()
        sup.append(float(err.max()))
        rms.append(float(err.pow(2).mean().sqrt()))
        params = net.n_params
    scale = float(y_t.pow(2).mean().sqrt())
    hs_arr = np.asarray(hs, float)
    # rounding noise: decode divides by h, so it grows like eps·depth·Lipschitz/h
    # (≈ 5e-10 at h = 1e-4 for the deep sawtooth); 1e-12/h leaves ×20 margin
    noise = 1e-12 * max(1.0, scale) / hs_arr
    tail = hs_arr <= fit_max_h * (1 + 1e-12)
    sup_a, rms_a = np.asarray(sup), np.asarray(rms)
    slope, used = loglog_slope(hs_arr[tail], sup_a[tail], noise[tail])
    slope_rms, _ = loglog_slope(hs_arr[tail], rms_a[tail], noise[tail])
    slope_all, _ = loglog_slope(hs_arr, sup_a, noise)
    exact = bool(tail.any()) and bool(np.all(sup_a[tail] <= noise[tail]))
    return {"teacher": T.name, "route": route, "activation": activation,
            "x0": net.x0, "hs": [float(h) for h in hs], "errors": sup, "rms": rms,
            "slope": slope, "slope_rms": slope_rms, "slope_all": slope_all, "points_fit": used,
            "fit_max_h": fit_max_h, "exact": exact,
            "params": params, "params_dense": count_params(T.shape).total,
            "teacher_rms": scale, "evaluator": evaluator, **info}


# ============================================================================ 3. rank-1 paradox

def rank1_interpolant(x, y, seed: int = 0, tries: int = 32, tol: float = 1e-8) -> dict:
    """A rank-1 ReLU network through N scalar data points, exactly (the paradox's good half).

    Paper §1/Fig. 1a: rank-1 networks "can interpolate any scalar dataset".  Construction:
    pick a direction v with distinct projections s_i = vᵀx_i (best of ``tries`` random
    unit vectors by smallest gap / spread), then the 1-D piecewise-linear interpolant
    ``g(s) = y_(1) + Σ_{j<N} c_j relu(s − s_(j))`` (c_j = slope changes).  As a `models`
    ``rank1`` Shape (depth 0, width N−1): layer 0 has V = v, U = 1ᵀ, b = −knots; layer 1
    has V = c, U = [[1]], b = y_(1) – every weight matrix is rank 1.  Evaluated by
    `models.forward` in float64; raises if the max error exceeds ``tol``.
    """
    X = _t(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
    Y = _t(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y).reshape(-1)
    if X.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"x must be [N, d] and y [N]; got {tuple(X.shape)} and {tuple(Y.shape)}")
    N, d = X.shape
    g = torch.Generator().manual_seed(int(seed))
    best_v, best_gap = None, -1.0
    for _ in range(tries):
        v = torch.randn(d, generator=g, dtype=DTYPE)
        v = v / v.norm()
        s = torch.sort(X @ v).values
        spread = float(s[-1] - s[0]) if N > 1 else 1.0
        gap = float((s[1:] - s[:-1]).min()) / max(spread, 1e-300) if N > 1 else 1.0
        if gap > best_gap:
            best_v, best_gap = v, gap
    if best_gap <= 1e-12:
        raise ValueError("data points are not distinct (no direction separates them)")
    s = X @ best_v
    order = torch.argsort(s)
    ss, ys = s[order], Y[order]
    width = max(N - 1, 1)
    c = torch.zeros(width, dtype=DTYPE)
    knots = torch.full((width,), float(ss[0]), dtype=DTYPE)
    if N > 1:
        slopes = (ys[1:] - ys[:-1]) / (ss[1:] - ss[:-1])
        c = torch.cat([slopes[:1], slopes[1:] - slopes[:-1]])
        knots = ss[:-1].clone()
    shape = Shape("rank1", d, 1, width, 0, activation="relu")
    params = {"l0.V": best_v[:, None][None], "l0.U": torch.ones(1, width, dtype=DTYPE)[None],
              "l0.b": (-knots)[None], "l1.V": c[:, None][None],
              "l1.U": torch.ones(1, 1, dtype=DTYPE)[None], "l1.b": ys[:1][None].clone()}
    pred = forward(shape, params, X)[0, :, 0]
    max_err = float((pred - Y).abs().max())
    if max_err > tol:
        raise RuntimeError(f"rank-1 interpolant missed the data by {max_err:.3g} > {tol:g}")
    return {"shape": shape, "params": params, "direction": best_v, "knots": knots,
            "max_error": max_err, "n_params": count_params(shape).total, "width": width,
            "min_gap_rel": best_gap}


def _x1x2(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    return x1 * x2


def _chord_quadrature(theta: float, n_s: int = 48, n_t: int = 16):
    """Quadrature of the uniform measure on [−1,1]² in coordinates (s = vᵀx, t = wᵀx).

    v = (cos θ, sin θ), w = (−sin θ, cos θ).  The chord at s is an interval [a(s), b(s)]
    that is linear between the projections of the corners, so Gauss–Legendre in s on each
    such piece and in t along each chord is (near) exact for polynomial targets.
    Returns s nodes, weights p(s)·ds (summing to 1), chord points x1, x2 [n_s', n_t] and
    the along-chord weights (rows sum to 1).
    """
    c, sn = math.cos(theta), math.sin(theta)
    corners = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], float) @ np.array([c, sn])
    bps = np.unique(np.round(corners, 14))
    gs, gw = np.polynomial.legendre.leggauss(n_s)
    gt, gwt = np.polynomial.legendre.leggauss(n_t)
    S, WS = [], []
    for lo, hi in zip(bps[:-1], bps[1:]):
        if hi - lo < 1e-14:
            continue
        S.append((hi - lo) / 2 * gs + (hi + lo) / 2)
        WS.append((hi - lo) / 2 * gw)
    s, ws = np.concatenate(S), np.concatenate(WS)
    lows, highs = [np.full_like(s, -np.inf)], [np.full_like(s, np.inf)]
    for coef, off in ((-sn, s * c), (c, s * sn)):  # constraints |off + coef·t| ≤ 1
        if abs(coef) > 1e-15:
            t1, t2 = (-1 - off) / coef, (1 - off) / coef
            lows.append(np.minimum(t1, t2))
            highs.append(np.maximum(t1, t2))
    a, b = np.max(lows, axis=0), np.min(highs, axis=0)
    length = np.maximum(b - a, 0.0)
    t = (b - a)[:, None] / 2 * gt[None] + (b + a)[:, None] / 2
    x1 = s[:, None] * c - t * sn
    x2 = s[:, None] * sn + t * c
    return s, ws * length / 4.0, x1, x2, np.broadcast_to(gwt / 2, t.shape)


def ridge_error(theta: float, f: Callable = _x1x2, n_s: int = 48, n_t: int = 16) -> dict:
    """Best L2 error of any ridge function g(vᵀx), v = (cos θ, sin θ), for f on [−1,1]².

    The optimum is the conditional mean m(s) = E[f | vᵀx = s], so
    ``err² = E[f²] − E[m(s)²]`` – computed by exact chord quadrature (`_chord_quadrature`).
    """
    s, ps, x1, x2, wt = _chord_quadrature(theta, n_s, n_t)
    fv = f(x1, x2)
    m = (wt * fv).sum(1)
    ef2 = float((ps * (wt * fv ** 2).sum(1)).sum())
    em2 = float((ps * m ** 2).sum())
    return {"theta": theta, "err": math.sqrt(max(ef2 - em2, 0.0)), "target_rms": math.sqrt(ef2),
            "s": s, "p": ps, "cond_mean": m}


def ridge_floor(f: Callable = _x1x2, n_angles: int = 90, refine: bool = True) -> dict:
    """Error floor of **every** rank-1-first-layer network on f (Fig. 5; "orthogonal blindness").

    If W_1 = u vᵀ then W_1 x = u (vᵀx): the whole network is a ridge function g(vᵀx)
    however wide or deep it is.  Its L2 error on the uniform measure of [−1,1]² is
    therefore at least ``min_θ ridge_error(θ)`` – the conditional-mean error in the best
    direction.  θ is scanned over [0, π) (the error has period π) and refined by golden
    section; for f = x1·x2 the floor is √(4/135) ≈ 0.1721 (RMS; ‖f‖ = 1/3, so 52 % of
    the target), attained at θ = π/4: there f = (s² − t²)/2 with t | s uniform on
    [−L, L], L = √2 − |s|, and floor² = E[Var(t²|s)]/4 = E[L⁴]/45 = 4/135.
    """
    thetas = np.linspace(0.0, math.pi, n_angles, endpoint=False)
    errs = np.array([ridge_error(t, f)["err"] for t in thetas])
    i = int(np.argmin(errs))
    best_t, best_e = float(thetas[i]), float(errs[i])
    if refine:
        step = math.pi / n_angles
        lo, hi = best_t - step, best_t + step
        gr = (math.sqrt(5) - 1) / 2
        m1, m2 = hi - gr * (hi - lo), lo + gr * (hi - lo)
        e1, e2 = ridge_error(m1, f)["err"], ridge_error(m2, f)["err"]
        for _ in range(50):  # golden section, one new evaluation per step
            if e1 < e2:
                hi, m2, e2 = m2, m1, e1
                m1 = hi - gr * (hi - lo)
                e1 = ridge_error(m1, f)["err"]
            else:
                lo, m1, e1 = m1, m2, e2
                m2 = lo + gr * (hi - lo)
                e2 = ridge_error(m2, f)["err"]
        t_ref = (lo + hi) / 2
        e_ref = ridge_error(t_ref, f)["err"]
        if e_ref < best_e:
            best_t, best_e = t_ref, e_ref
    target = ridge_error(best_t, f)["target_rms"]
    return {"floor_rms": best_e, "floor_rel": best_e / target, "theta": best_t,
            "target_rms": target, "angles": thetas, "errors": errs}


def rank1_param_sweep(widths=(1, 2, 4, 8, 16, 32, 64), f: Callable = _x1x2, theta: float | None = None,
                      floor: dict | None = None) -> dict:
    """Best rank-1 ReLU network of each width on f: the error stalls at the ridge floor (Fig. 5).

    A width-m rank-1 network (one hidden layer) is g(s) = c_0 + Σ_j c_j relu(s − t_j),
    s = vᵀx.  For a direction θ its L2 error splits exactly as
    ``err² = ridge_error(θ)² + ‖m − g‖²_{p}`` (Pythagoras: g is a function of s), so
    we fit g to the conditional mean m by weighted least squares on the s-quadrature
    (knots evenly spaced over the s range).  θ defaults to the floor's best direction;
    pass a precomputed ``floor`` (from `ridge_floor`) to skip recomputing it.
    Errors fall with m but never below ``floor_rms`` – parameters do not help.
    """
    fl = ridge_floor(f) if floor is None else floor
    theta = fl["theta"] if theta is None else theta
    r = ridge_error(theta, f, n_s=96)
    s, p, m = r["s"], r["p"], r["cond_mean"]
    lo, hi = float(s.min()), float(s.max())
    errors, params = [], []
    for w in widths:
        knots = lo - 1e-9 + (hi - lo) * np.arange(w) / w
        Phi = np.concatenate([np.ones((s.size, 1)), np.maximum(s[:, None] - knots[None], 0.0)], 1)
        sw = np.sqrt(p)[:, None]
        coef, *_ = np.linalg.lstsq(Phi * sw, m * sw[:, 0], rcond=None)
        resid2 = float((p * (Phi @ coef - m) ** 2).sum())
        errors.append(math.sqrt(r["err"] ** 2 + resid2))
        params.append(count_params(Shape("rank1", 2, 1, w, 0, activation="relu")).total)
    return {"widths": list(widths), "errors": errors, "params": params,
            "floor_rms": fl["floor_rms"], "theta": theta}


def product_via_squares(h: float = 1e-2, activation: str = "softplus", x0: float | None = None,
                        n_grid: int = 101) -> dict:
    """x1·x2 by a 4-unit network with a **rank-2** first layer – far below the rank-1 floor.

    x1·x2 = ((x1+x2)² − (x1−x2)²)/4, and a near-quadratic activation gives squares by the
    second-order Taylor trick ``(σ(x0+ha) + σ(x0−ha) − 2σ(x0)) / (h² σ''(x0)) = a² + O(h²)``.
    As a `models` ``lowrank`` Shape (rank 2, width 4, depth 0): layer 0 has V = h·I₂,
    U = [[1,−1,1,−1],[1,−1,−1,1]], b = x0; layer 1 has V = [c, 0], U = [[1],[0]] with
    c = (1,1,−1,−1)/(4h²σ''(x0)).  Needs σ''(x0) ≠ 0 (softplus at 0: ¼).
    Returns the sup/RMS error on an n_grid² grid of [−1,1]², the parameter count and the
    rank-1 floor for comparison.
    """
    x0 = {"softplus": 0.0, "silu": 0.0, "gelu": 0.0, "tanh": 0.5, "sigmoid": 0.5}.get(activation, 0.0) \
        if x0 is None else float(x0)
    s0, s1, s2 = taylor_coefficients(activation, x0)
    if abs(s2) < 1e-12:
        raise ValueError(f"σ''({x0}) = 0 for {activation}: pick another x0")
    shape = Shape("lowrank", 2, 1, 4, 0, rank=2, activation=activation)
    c = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=DTYPE) / (4 * h * h * s2)
    params = {
        "l0.V": (h * torch.eye(2, dtype=DTYPE))[None],
        "l0.U": torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0]], dtype=DTYPE)[None],
        "l0.b": torch.full((4,), x0, dtype=DTYPE)[None],
        "l1.V": torch.stack([c, torch.zeros(4, dtype=DTYPE)], 1)[None],
        "l1.U": torch.tensor([[1.0], [0.0]], dtype=DTYPE)[None],
        "l1.b": torch.zeros(1, dtype=DTYPE)[None],
    }
    g = torch.linspace(-1.0, 1.0, n_grid, dtype=DTYPE)
    X = torch.cartesian_prod(g, g)
    err = forward(shape, params, X)[0, :, 0] - X[:, 0] * X[:, 1]
    return {"h": h, "activation": activation, "sup": float(err.abs().max()),
            "rms": float(err.pow(2).mean().sqrt()), "params": count_params(shape).total,
            "shape": shape, "params_tensors": params}

"""Cohort trainer: K same-shape members trained together as stacked tensors.

Why: a scaling study trains thousands of tiny networks that differ only in seed and
hyperparameters. One at a time, each step is a few hundred microsecond-sized kernels
dominated by Python and launch overhead; stacked along a member axis K, the same step is
a handful of batched ops whose cost grows far slower than K (HFTA, MLSys'21).

Design, and why each piece is there:

* **One flat buffer.** All parameters live in one ``[K, P]`` float32 tensor (Adam's m and
  v likewise) with per-layer views built each step, so AdamW is a few elementwise ops
  over three tensors, and pack/unpack/compaction are row copies. Weights whose output
  dim is tiny (``V`` of a low-rank factor, the last layer's ``W``) are stored transposed
  so the contraction runs along contiguous memory (see `FlatLayout`).
* **Members never mix.** Every op is batched over K; the loss is the sum of per-member
  MSEs, so each member's gradient is exactly its own. A NaN in one member cannot reach
  another, so divergence is detected per member at report time.
* **Composition-independent numbers.** Init is `models.init_member` (pure in its args);
  the minibatch order is a counter-based hash of (member seed, member epoch) sorted on
  device (`member_order`). A member trains identically alone, refilled mid-run into a
  freed slot, after compaction, or after checkpoint/resume.
* **Few host syncs.** Steps only enqueue work. The host reads the device once per report
  round (train loss accumulated on device + val/test metrics in one ``.tolist()``).
* **Fused step.** The whole step (forward, backward via `torch.func.grad_and_value`,
  AdamW) is one function that `torch.compile` turns into one C++/Triton kernel plus the
  fat bmm calls. On CPU the cohort runs in chunks of C members so a chunk's activations
  stay in cache; skinny matmuls (a dim ≤ ``SKINNY``, e.g. rank 2) are written as
  broadcast-reduce so they fuse with the elementwise work instead of going through
  BLAS at ~2 GFLOP/s; tanh is a rational approximation (`tanh_rational`, ≤ 4e-7 abs
  error) stored once per layer. Eager mode (``compile=False``) runs `models.forward`
  with plain autograd. See benchmarks/README.md for the measurements behind this.

Reports: at member epochs that are multiples of ``report_every`` and at its last epoch,
the source gets the mean train loss of that epoch's steps and the val error of the
current weights — all members due in one round at once (``on_report_round``, so a
pruner can judge a member against its running peers at the same step), or one by one
(``on_report``) for sources without it. A non-finite train loss or val error finishes
the member as ``diverged`` (not reported). The cohort never produces ``failed`` itself:
an exception propagates, and the driver resumes from a checkpoint.

Training to capacity (why each is here: an optimisation floor is not a capacity floor):

* **Schedule.** ``schedule="cosine"`` decays each member's lr from its sampled value to
  ``lr_floor ×`` that value over its own epochs (Adam at a constant lr plateaus at a
  size-independent floor; decay removes most of it).
* **Select and score the same weights.** Each member's best-val weights are kept in a
  second ``[K, P]`` buffer; ``test_error`` (and ``params``) come from those weights,
  never from the last epoch.
* **Early stopping.** With ``patience`` (in reports), a member whose best val has not
  improved by ``min_delta`` (relative) for that many reports finishes ``completed``
  with ``stopped_early=True`` and frees its slot.
* **Quasi-Newton finish.** With ``finish_iterations`` > 0, members that complete (or stop
  early) are finished together by batched L-BFGS in float64 (``finish_precision`` "fp32":
  float32, ~1.6× cheaper on CPU) on the full training set
  (`dlor_scale.lbfgs`), starting from their best-val weights; val is checked every
  ``finish_report_every`` iterations and the best weights kept. Their curves continue at
  steps ``epochs + i`` (i = L-BFGS iteration). Pruned/diverged members are not finished.
* **Diagnostics.** ``baseline_val`` is the mean predictor's val error (a member near it
  did not train); ``undertrained`` marks a member that ran all its epochs and was still
  improving by more than ``UNDERTRAINED_REL`` over its last quarter.

Minibatches: ``steps_per_epoch = N // batch_size``; the last partial batch is DROPPED so
every step has the same shape (one compiled graph) and every member sees equally many
samples per epoch. ``batch_size=None`` (or ≥ N) means full batch: one step per epoch on
the shared, un-gathered training set.
"""

from __future__ import annotations

import math
import time
import types
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Protocol

import torch

from . import lbfgs
from .models import Shape, _diag_full, activation_fn, forward, init_member

EPS = 1e-8
SKINNY = 8          # contraction or output dim ≤ this → broadcast-reduce instead of bmm
METRICS = ("mse", "rmse", "max_abs", "rel_l2")
SCHEDULES = ("constant", "cosine")
#: A member that ran all its epochs and whose best val fell by more than this fraction over
#: its last quarter of epochs was still improving when it stopped: more epochs would help.
#: 10 %: a curve flatter than that is within roughly its own tail of its plateau, small
#: against the ≥ 40 % error steps between a scaling study's budgets (α ≈ 0.5, P × 2).
UNDERTRAINED_REL = 0.10
PRECISIONS = ("fp32", "tf32", "bf16")
FINISH_DTYPES = {"fp64": torch.float64, "fp32": torch.float32}   # L-BFGS finish precisions
_STATE_VERSION = 2
_CACHE_BUDGET_BYTES = 16 << 20   # CPU chunk working set: for w64/L8/B256 (~2 MB of
                                  # activations per member) → chunk 8; measured chunk
                                  # 4: 2.6k, 8–16: 2.8–3.4k, 32: 1.7k model-steps/s
_CAT_GRADS_MIN_P = 16_384         # per-member params from which per-segment grads + cat
                                  # beat the masked flat reassembly (see _step_func)
_EVAL_BUDGET_ELEMS = 1 << 22      # rows × K × width per eval chunk (16 MB of fp32)
_COMPILE_MIN_MODEL_STEPS = 20_000  # CPU 'auto': compiled steps are 2–8× faster than eager
                                   # even at K=1 (measured), so compile whenever one
                                   # generation of members amortises the compile time


# ----------------------------------------------------------------------------- API types

@dataclass
class MemberSpec:
    """One member to train: its identity, seed and optimizer hyperparameters."""

    key: str
    seed: int
    lr: float
    weight_decay: float = 0.0
    init_scale: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    extra: dict = field(default_factory=dict)


@dataclass
class MemberResult:
    """What a finished member reports. Curves are ``(epoch, value)`` at report epochs.

    ``params`` is filled (natural `models` layout, CPU) only when the cohort was built
    with ``keep_params=True``.
    """

    key: str
    state: str
    epochs: int
    train_loss: list[tuple[int, float]]
    val_error: list[tuple[int, float]]
    best_val: float
    test_error: float
    epochs_to_threshold: int | None
    wall_time_s: float
    spec: MemberSpec
    params: dict | None = None
    best_epoch: int = 0          # epoch of best val: the weights test_error is read from
    stopped_early: bool = False  # finished on a val plateau before its last epoch
    undertrained: bool = False   # ran every epoch and was still improving (see UNDERTRAINED_REL)
    baseline_val: float = math.nan  # val error of the mean predictor on the same split


@dataclass(frozen=True)
class Report:
    """One member's numbers at one report step (what a pruner judges)."""

    key: str
    epoch: int
    train_loss: float
    val_error: float


class Source(Protocol):
    """Feeds members to a cohort and receives their reports (the Optuna loop)."""

    def next_member(self) -> MemberSpec | None: ...

    def on_report(self, key: str, epoch: int, train_loss: float, val_error: float) -> bool: ...

    # Optional: ``on_report_round(reports: list[Report]) -> Collection[str]`` (keys to
    # prune) is called instead of ``on_report`` when a source defines it.

    def on_finish(self, result: MemberResult) -> None: ...


# ----------------------------------------------------------------------------- layout

@dataclass(frozen=True)
class _Entry:
    name: str
    offset: int
    numel: int
    shape: tuple[int, ...]      # natural per-member shape (models.tensor_shapes)
    transposed: bool            # stored as shape[::-1]


class FlatLayout:
    """Where each parameter lives in a member's flat row, and in which orientation.

    A 2-D weight ``[a, b]`` with ``b ≤ SKINNY < a`` is stored transposed: its product is
    then a reduction along contiguous memory (vectorised) rather than a strided gather.
    `views` still returns natural-shaped views (a transpose is free), so `models.forward`
    works on them unchanged.
    """

    def __init__(self, shape: Shape):
        self.entries: list[_Entry] = []
        off = 0
        for name, shp in shape.tensor_shapes().items():
            tr = len(shp) == 2 and shp[1] <= SKINNY < shp[0]
            n = math.prod(shp)
            self.entries.append(_Entry(name, off, n, tuple(shp), tr))
            off += n
        self.numel = off

    def segments(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """``[K, P]`` → one ``[K, numel]`` view per parameter tensor."""
        return [flat[:, e.offset:e.offset + e.numel] for e in self.entries]

    def views_of(self, segs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Segments → natural-shaped ``[K, *shape]`` views (no copies)."""
        out = {}
        for e, seg in zip(self.entries, segs):
            k = seg.shape[0]
            out[e.name] = (seg.view(k, *e.shape[::-1]).transpose(1, 2) if e.transposed
                           else seg.view(k, *e.shape))
        return out

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[K, P]`` → natural-shaped ``[K, *shape]`` views (no copies)."""
        return self.views_of(self.segments(flat))

    def pack(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """One member's natural-layout dict → its flat row ``[P]``."""
        parts = [(params[e.name].t() if e.transposed else params[e.name]).reshape(-1)
                 for e in self.entries]
        return torch.cat(parts).to(torch.float32)

    def unpack(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat row ``[P]`` → natural-layout, contiguous CPU tensors (copies)."""
        views = self.views(row.detach().unsqueeze(0))
        return {k: v[0].contiguous().cpu().clone() for k, v in views.items()}


# ----------------------------------------------------------------------------- data order

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """32-bit integer hash (xor-shift-multiply) on int64 tensors holding values < 2³².

    The multiplier is < 2²⁷ so products stay < 2⁵⁹: no int64 overflow on any backend.
    """
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def member_order(seeds: torch.Tensor, epochs: torch.Tensor, n: int) -> torch.Tensor:
    """Per-member permutation of ``range(n)``: ``[K, n]`` int64, on the seeds' device.

    A pure function of (seed, epoch, n) per row, computed for all rows at once: each
    sample index gets a 62-bit hash key and a stable argsort orders them (ties, if any,
    resolve by index). No per-member Python loop, no host sync.
    """
    seeds = seeds.to(torch.int64).view(-1, 1)
    epochs = epochs.to(torch.int64).view(-1, 1)
    idx = torch.arange(n, device=seeds.device, dtype=torch.int64).view(1, -1)
    base = _mix32(_mix32(seeds & _M32) ^ ((seeds >> 32) & _M32))
    base = _mix32(base ^ _mix32(epochs & _M32))
    k1 = _mix32(base ^ _mix32(idx))
    k2 = _mix32(k1 ^ 0x5BD1E995)
    return torch.argsort((k1 << 30) | (k2 >> 2), dim=1, stable=True)


# ----------------------------------------------------------------------------- the step

def _mm(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a [K,B,m] @ w [K,m,n]`` written so the compiler can fuse skinny products.

    bmm of a 256×64 block with a 64×2 factor runs at a few GFLOP/s (BLAS is built for
    fat matrices) and forces a memory round trip; as a broadcast-multiply-reduce it is
    fused into the neighbouring elementwise loop. Fat products stay on bmm.
    """
    m, n = w.shape[-2], w.shape[-1]
    if m <= SKINNY:      # short contraction: the compiler unrolls it into one loop
        return (a.unsqueeze(-1) * w.unsqueeze(1)).sum(-2)
    if n <= SKINNY:      # few outputs: reduce along the (contiguous, stored-transposed) m
        return (a.unsqueeze(2) * w.transpose(1, 2).unsqueeze(1)).sum(-1)
    return torch.bmm(a, w)


# Rational minimax approximation of tanh on [-7.9, 7.9] (Eigen's generic_fast_tanh_float,
# as used by XLA/TF on CPU): numerator odd degree 13, denominator even degree 6.
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
           5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
           -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
           1.19825839466702e-06)
_TANH_CLAMP = 7.90531110763549805


def tanh_rational(x: torch.Tensor) -> torch.Tensor:
    """tanh to within ~3 ulp (max abs error 3.4e-7), in ~12 fusable multiply-adds.

    Why: compiled (Sleef u10) tanh costs ~55 cycles per 16 floats on this CPU and was
    the single largest term of the dlor_deep step; this costs a third of that.
    """
    xc = x.clamp(-_TANH_CLAMP, _TANH_CLAMP)
    x2 = xc * xc
    p = x2 * _TANH_P[6] + _TANH_P[5]
    for c in _TANH_P[4::-1]:
        p = x2 * p + c
    q = x2 * _TANH_Q[3] + _TANH_Q[2]
    for c in _TANH_Q[1::-1]:
        q = x2 * q + c
    return torch.where(x.abs() < 4e-4, x, xc * p / q)


class _Tanh(torch.autograd.Function):
    """tanh_rational forward, exact tanh' = 1 − y² backward (as aten's tanh_backward)."""

    @staticmethod
    def forward(x):
        return tanh_rational(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


def fused_forward(shape: Shape, params: dict[str, torch.Tensor], x: torch.Tensor,
                  fast_tanh: bool = True) -> torch.Tensor:
    """`models.forward` rewritten for the compiler: skinny products as broadcast-reduce,
    and (CPU) tanh as `tanh_rational`. Same function up to float rounding (tests bound
    the gap). On CUDA the compiler's own tanh is already cheap, so it is kept.
    """
    layers = shape.layers()
    act = (_Tanh.apply if fast_tanh and shape.activation == "tanh"
           else activation_fn(shape.activation))
    k = next(iter(params.values())).shape[0]
    h = x if x.dim() == 3 else x.unsqueeze(0).expand(k, *x.shape)
    for i, layer in enumerate(layers):
        if layer.kind == "dense":
            z = _mm(h, params[f"l{i}.W"])
        else:
            z = _mm(_mm(h, params[f"l{i}.V"]), params[f"l{i}.U"])
        z = z + params[f"l{i}.b"].unsqueeze(1)
        if layer.kind == "dlor" and f"l{i}.d" in params:
            z = z + _diag_full(layer, params[f"l{i}.d"]) * h
        h = act(z) if i < len(layers) - 1 else z
    return h


def adamw_coefficients(step: torch.Tensor, hyp: torch.Tensor,
                       lr_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Per-member AdamW scalars for the next step, ``[K, 6]`` float32; advances ``step``.

    Computed in float64 like the Python floats torch.optim.AdamW uses, then rounded once
    to float32 as its kernels do. Done once per cohort step OUTSIDE the compiled step:
    inside it, the generated C++ re-evaluated both float64 ``pow`` calls for every
    16 parameters.
    Columns: 1 − lr·wd, 1 − β1, β2, 1 − β2, −lr / (1 − β1ᵗ), √(1 − β2ᵗ).
    ``lr_scale`` (``[K]``, from the schedule) multiplies each member's lr, as a torch
    lr scheduler multiplies a param group's lr (weight decay included).
    """
    step.add_(1)
    lr, wd, b1, b2 = (h[:, None] for h in hyp.unbind(1))
    if lr_scale is not None:
        lr = lr * lr_scale[:, None]
    return torch.cat([1 - lr * wd, 1 - b1, b2, 1 - b2, -lr / (1 - b1 ** step),
                      torch.sqrt(1 - b2 ** step)], dim=1).to(torch.float32)


_V_FLOOR = 1e-36   # see _adamw_


def lr_schedule_scale(kind: str, progress: torch.Tensor, floor: float) -> torch.Tensor:
    """Multiplier of each member's lr at ``progress`` ∈ [0, 1] of its epochs (float64)."""
    if kind == "constant":
        return torch.ones_like(progress)
    t = progress.clamp(0.0, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + torch.cos(math.pi * t))


def _adamw_(p, g, m, v, c):
    """In-place AdamW over ``[K, P]`` in torch.optim.AdamW's exact order (c: coefficients).

    Empty slots carry lr = wd = 0, so they never move. ``sqrt`` reads ``max(v, 1e-36)``:
    a denormal v (tiny gradients) makes sqrt ~40× and the division ~7× slower on x86
    (microcode assists; measured 2–3× on a whole dlor_deep step). It cannot change the
    result: √1e-36 / √(1−β2) is far below half an ulp of eps, so ``denom == eps``
    either way; v itself is stored unclamped.
    """
    p.mul_(c[:, 0:1])
    m.lerp_(g, c[:, 1:2])
    v.mul_(c[:, 2:3]).addcmul_(g * c[:, 3:4], g)
    denom = (v.clamp_min(_V_FLOOR).sqrt() / c[:, 5:6]).add_(EPS)
    p.addcdiv_(m * c[:, 4:5], denom)


def _loss_terms(fwd, p, x, y, autocast: torch.dtype | None):
    if autocast is None:
        out = fwd(p, x)
    else:
        with torch.autocast(device_type=p.device.type, dtype=autocast):
            out = fwd(p, x)
    per = (out.float() - y).square().mean(dim=(1, 2))
    return per.sum(), per.detach()


def _step_func(fwd, split, p, m, v, acc, coef, x, y, autocast=None, cat_grads=False):
    """One fused AdamW step for a block of members, entirely in place (compiled path).

    ``split`` cuts the flat ``[K, P]`` buffer into per-tensor segments (views) and
    ``fwd`` maps segments to outputs. The flat gradient is either taken through the
    slices (the compiler reassembles it with a masked select over all ~30 segments per
    element: cheap for small P) or per segment then concatenated (one copy; measured
    1.3–1.5× faster for dense w64, P = 34k, but 2–3× slower for dlor_deep w64, P = 3.5k,
    whose fused kernel then hits denormal assists — flushing denormals removes the gap).
    """
    if cat_grads:
        grad_fn = torch.func.grad_and_value(
            lambda qs: _loss_terms(fwd, qs, x, y, autocast), has_aux=True)
        gs, (_, per) = grad_fn(split(p))
        g = torch.cat(gs, dim=1)
    else:
        grad_fn = torch.func.grad_and_value(
            lambda q: _loss_terms(fwd, split(q), x, y, autocast), has_aux=True)
        g, (_, per) = grad_fn(p)
    acc.add_(per)
    _adamw_(p, g, m, v, coef)


def _step_autograd(fwd, split, p, m, v, acc, coef, x, y, autocast=None, cat_grads=False):
    """The same step with plain autograd on the flat buffer (eager: fewest ops)."""
    with torch.enable_grad():
        q = p.detach().requires_grad_(True)
        total, per = _loss_terms(fwd, split(q), x, y, autocast)
        (g,) = torch.autograd.grad(total, q)
    with torch.no_grad():
        acc.add_(per)
        _adamw_(p, g, m, v, coef)


def _eval_block(fwd, split, p, x, y, w):
    """Per-member Σ w·(out − y)² and max w·|out − y| over one block of eval rows.

    Rows are padded to whole blocks (w = 0 on padding) so every call has one shape and
    one compiled graph; x and y are shared by all members.
    """
    d = (fwd(split(p), x).float() - y) * w[:, None]
    return d.double().square().sum(dim=(1, 2)), d.abs().amax(dim=(1, 2))


def _compile_options(cuda: bool) -> dict:
    """Inductor options. CPU: materialise any pointwise expression over 24 ops, so each
    layer's `tanh_rational` output is computed once and stored instead of being inlined
    (recomputed) into its ~5 consumers (measured 1.7× on the dlor_deep step).
    CUDA: the whole step replays as a CUDA graph (what mode='reduce-overhead' sets)."""
    return {"triton.cudagraphs": True} if cuda else {"realize_cpu_opcount_threshold": 24}


def _private_copy(fn):
    """A copy of ``fn`` with its own code object.

    torch.compile caches compiled graphs per code object and, past a small limit
    (8 shape variants), silently falls back to eager. Each cohort compiles its own copy,
    so a long-lived worker that trains many shapes never hits the limit, and the
    compiled artefacts are freed with the cohort.
    """
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{id(object()):x}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


# ----------------------------------------------------------------------------- slot state

@dataclass
class _Member:
    """Host-side bookkeeping of one member in flight."""

    spec: MemberSpec
    epoch: int = 0
    train_loss: list = field(default_factory=list)
    val_error: list = field(default_factory=list)
    best_val: float = math.nan
    best_epoch: int = 0
    stale_reports: int = 0      # reports since best_val last improved by min_delta
    finish_active: bool = False  # L-BFGS finish had not converged when it ended
    threshold_epoch: int | None = None
    elapsed: float = 0.0        # wall seconds in flight before `mark`
    mark: float = 0.0           # perf_counter when elapsed was last folded in

    def wall(self, now: float) -> float:
        return self.elapsed + (now - self.mark)

    def to_state(self, now: float) -> dict:
        """Plain data for a checkpoint: every field by its own name (``mark``, a reading of
        this process's clock, is folded into ``elapsed``)."""
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mark"}
        state.update(spec=asdict(self.spec), elapsed=self.wall(now),
                     train_loss=list(self.train_loss), val_error=list(self.val_error))
        return state

    @classmethod
    def from_state(cls, d: dict, now: float) -> _Member:
        """Inverse of `to_state`; fields a checkpoint predates keep their defaults."""
        known = {f.name for f in fields(cls)}
        kw = {k: ([tuple(t) for t in v] if isinstance(v, list) else v) for k, v in d.items() if k in known}
        kw.update(spec=MemberSpec(**d["spec"]), mark=now)
        return cls(**kw)


def in_flight_best_vals(state: dict) -> dict[str, float]:
    """Best val so far of each member a checkpoint (`Cohort.state_dict`) holds in flight:
    what pruners judge a resumed member by."""
    members = (_Member.from_state(d, 0.0) for d in state["members"] if d is not None)
    return {m.spec.key: m.best_val for m in members}


# ----------------------------------------------------------------------------- cohort

class Cohort:
    """Train many same-shape members as one stacked model; see the module docstring.

    ``slots`` is how many members train at once. Freed slots (completed, pruned,
    diverged) are refilled from the source at once; once the source returns ``None`` it
    is treated as exhausted and never asked again, and the cohort compacts when fewer
    than half its slots are active.

    Extra keyword arguments beyond the driver API: ``chunk`` (members per fused call;
    default: cache-sized on CPU, all on CUDA) and ``keep_params`` (attach final weights
    to each `MemberResult`).

    Training protocol: ``schedule`` / ``lr_floor`` (lr decay per member), ``patience`` /
    ``min_delta`` (early stopping on a val plateau, ``None`` = off); see the module doc.
    """

    def __init__(self, shape: Shape, data, *, slots: int, epochs: int, report_every: int,
                 batch_size: int | None = None, metric: str = "rmse",
                 threshold: float | None = None, device="cpu", compile: bool | str = "auto",
                 precision: str = "fp32", chunk: int | None = None, keep_params: bool = False,
                 schedule: str = "constant", lr_floor: float = 0.01, patience: int | None = None,
                 min_delta: float = 1e-3, finish_iterations: int = 0, finish_history: int = 20,
                 finish_precision: str = "fp64"):
        if slots < 1 or epochs < 1 or report_every < 1:
            raise ValueError("slots, epochs and report_every must be ≥ 1")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if not 0.0 <= lr_floor <= 1.0:
            raise ValueError(f"lr_floor must be in [0, 1], got {lr_floor}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be ≥ 1 report (or None), got {patience}")
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")
        if (data.d_in, data.d_out) != (shape.d_in, shape.d_out):
            raise ValueError(f"data is {data.d_in}→{data.d_out} but shape is "
                             f"{shape.d_in}→{shape.d_out}")
        self.shape, self.epochs, self.report_every = shape, epochs, report_every
        self.metric, self.threshold, self.keep_params = metric, threshold, keep_params
        self.schedule, self.lr_floor = schedule, float(lr_floor)
        self.patience, self.min_delta = patience, float(min_delta)
        self.finish_iterations, self.finish_history = int(finish_iterations), int(finish_history)
        if finish_precision not in FINISH_DTYPES:
            raise ValueError(f"unknown finish_precision {finish_precision!r}; allowed: {', '.join(FINISH_DTYPES)}")
        self.finish_dtype = FINISH_DTYPES[finish_precision]
        self.finish_report_every = max(1, self.finish_iterations // 20)
        self.device = torch.device(device)
        self.data = data.to(self.device)
        self.layout = FlatLayout(shape)
        n = self.data.x_train.shape[0]
        self.full_batch = batch_size is None or batch_size >= n
        self.batch = n if self.full_batch else int(batch_size)
        self.steps_per_epoch = 1 if self.full_batch else n // self.batch

        cuda = self.device.type == "cuda"
        if chunk is None:   # CPU: largest power of two whose activations fit the budget
            per_member = 4 * self.batch * max(shape.width, shape.d_in) * 3 * (shape.depth + 2)
            fit = max(1, _CACHE_BUDGET_BYTES // per_member)
            chunk = slots if cuda else 1 << (fit.bit_length() - 1)
        n_chunks = math.ceil(slots / max(1, min(chunk, slots)))
        self.chunk = math.ceil(slots / n_chunks)     # equal chunks: one compiled shape
        self.capacity = self.chunk * n_chunks        # ≥ slots; spare slots stay empty
        self.slots = slots

        if compile == "auto":   # CPU: only when the run amortises a 15–40 s compile
            planned = self.capacity * epochs * self.steps_per_epoch
            compile = cuda or planned >= _COMPILE_MIN_MODEL_STEPS
        self._autocast = torch.bfloat16 if (precision == "bf16" and cuda) else None
        eff_precision = precision if cuda else "fp32"
        if eff_precision != precision:
            warnings.warn(f"precision={precision!r} is CUDA-only; "
                          f"training in fp32 on {self.device}")
        self.settings = {
            "device": str(self.device), "compile": bool(compile),
            "compile_options": _compile_options(cuda) if compile else None,
            "precision": eff_precision,
            "matmul_precision": "high" if eff_precision == "tf32" else "highest",
            "autocast": str(self._autocast) if self._autocast else None,
            "slots": slots, "capacity": self.capacity, "chunk": self.chunk,
            "full_batch": self.full_batch, "batch_size": self.batch,
            "steps_per_epoch": self.steps_per_epoch, "last_partial_batch": "dropped",
            "skinny_max": SKINNY, "threads": torch.get_num_threads(),
        }
        self._compiled = self._eval_compiled = None
        if compile:
            opts = _compile_options(cuda)
            self._compiled = torch.compile(_private_copy(_step_func), fullgraph=True,
                                           dynamic=False, options=opts)
            self._eval_compiled = torch.compile(_private_copy(_eval_block), fullgraph=True,
                                                dynamic=False, options=opts)
            self._fwd = lambda segs, x: fused_forward(shape, self.layout.views_of(segs), x,
                                                      fast_tanh=not cuda)
        else:
            self._fwd = lambda segs, x: forward(shape, self.layout.views_of(segs), x)
        self._eval_sets = {s: self._pad_split(s) for s in ("val", "test")}
        self.baseline_val = baseline_error(self.data, metric)
        self.stats = {"steps": 0, "model_steps": 0, "report_rounds": 0, "compactions": 0,
                      "train_s": 0.0, "eval_s": 0.0, "first_step_s": None}
        self._alloc(self.capacity)
        self.members: list[_Member | None] = [None] * self.capacity
        self.exhausted = False

    # ------------------------------------------------------------------ device state

    def _alloc(self, k: int):
        dev, p = self.device, self.layout.numel
        self.flat = torch.zeros(k, p, device=dev)
        self.best = torch.zeros(k, p, device=dev)     # each member's best-val weights
        self.m = torch.zeros(k, p, device=dev)
        self.v = torch.zeros(k, p, device=dev)
        self.step = torch.zeros(k, 1, dtype=torch.float64, device=dev)
        self.hyp = torch.zeros(k, 4, dtype=torch.float64, device=dev)   # lr, wd, b1, b2
        self.hyp[:, 2:] = 0.5                                          # harmless for empty slots
        self.acc = torch.zeros(k, device=dev)
        self.coef = torch.zeros(k, 6, device=dev)
        self.seeds = torch.zeros(k, dtype=torch.int64, device=dev)
        self.ep = torch.zeros(k, dtype=torch.int64, device=dev)
        self._mark_static()

    def _mark_static(self):
        """CUDA graphs replay only over fixed addresses: declare the in-place state."""
        if self.device.type == "cuda" and self._compiled is not None:
            for t in (self.flat, self.m, self.v, self.acc, self.coef):
                torch._dynamo.mark_static_address(t)

    def _start(self, slot: int, spec: MemberSpec):
        """Fresh member in ``slot``: init from its seed, zeroed Adam state, step 0."""
        row = self.layout.pack(init_member(self.shape, spec.seed, spec.init_scale))
        self.flat[slot] = row.to(self.device)
        self.best[slot] = self.flat[slot]
        self.m[slot] = 0
        self.v[slot] = 0
        self.step[slot] = 0
        self.hyp[slot] = torch.tensor([spec.lr, spec.weight_decay, spec.beta1, spec.beta2],
                                      dtype=torch.float64)
        self.seeds[slot] = int(spec.seed)
        self.ep[slot] = 0
        self.members[slot] = _Member(spec, mark=time.perf_counter())

    def _free(self, slot: int):
        """Empty a slot: zero weights and lr so it computes cheap, finite garbage."""
        self.members[slot] = None
        for t in (self.flat, self.best, self.m, self.v):
            t[slot] = 0
        self.hyp[slot, :2] = 0

    def _refill(self):
        for slot in range(self.capacity):
            if self.members[slot] is None and slot < self.slots and not self.exhausted:
                spec = self._source.next_member()
                if spec is None:
                    self.exhausted = True
                else:
                    self._start(slot, spec)

    def _compact(self):
        """Re-pack active members into fewer chunks (pure row moves: numbers unchanged).

        Only once the source is exhausted (freed slots can no longer be refilled). Chunked
        cohorts drop whole chunks (same chunk shape: the compiled graph is reused). An
        unchunked eager cohort shrinks to a power of two; an unchunked compiled one is
        left alone, since a recompile costs more than the tail it would speed up.
        """
        active = [i for i, mem in enumerate(self.members) if mem is not None]
        if not self.exhausted or not active or 2 * len(active) >= self.capacity:
            return
        if self.chunk < self.capacity:
            new_k = math.ceil(len(active) / self.chunk) * self.chunk
        elif self._compiled is None:
            new_k = 1 << (len(active) - 1).bit_length()
            self.chunk = new_k
        else:
            return
        if new_k >= self.capacity:
            return
        idx = torch.tensor(active + [i for i in range(self.capacity) if i not in active],
                           device=self.device)[:new_k]
        for name in ("flat", "best", "m", "v", "step", "hyp", "acc", "coef", "seeds", "ep"):
            setattr(self, name, getattr(self, name)[idx].clone())
        self._mark_static()
        self.members = [self.members[i] for i in idx.tolist()]
        self.capacity = self.slots = new_k
        self.settings.update(capacity=new_k, chunk=self.chunk)
        self.stats["compactions"] += 1

    # ------------------------------------------------------------------ training

    def _call_step(self, sl: slice, x, y):
        whole = sl.stop - sl.start == self.capacity    # pass the tensors themselves, so
        state = (self.flat, self.m, self.v, self.acc, self.coef)  # CUDA graphs see
        if not whole:                                  # their static addresses
            state = tuple(t[sl] for t in state)
        args = (self.layout.segments, *state, x, y, self._autocast,
                self.layout.numel >= _CAT_GRADS_MIN_P)
        return self._dispatch("_compiled", _step_autograd, args)

    def _dispatch(self, attr: str, eager, args):
        """Run the compiled function ``attr`` (or ``eager``); any compiler failure turns
        the cohort eager for good, with one warning (no state was touched yet: compile
        errors are raised before the graph runs)."""
        compiled = getattr(self, attr)
        if compiled is not None:
            try:
                return compiled(self._fwd, *args)
            except Exception as exc:  # noqa: BLE001 — any compiler failure → eager
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); "
                              "continuing in eager mode")
                self._compiled = self._eval_compiled = None
                self.settings.update(compile=False, compile_options=None,
                                     compile_error=f"{type(exc).__name__}: {exc}"[:500])
                self._fwd = lambda segs, x_: forward(self.shape, self.layout.views_of(segs), x_)
        return eager(self._fwd, *args)

    def _train_epoch(self):
        """One epoch for every slot: no host sync inside."""
        d, k, c = self.data, self.capacity, self.chunk
        self.acc.zero_()
        if not self.full_batch:
            perm = member_order(self.seeds, self.ep, d.x_train.shape[0])
        live = [i for i in range(0, k, c) if any(self.members[i:i + c])]
        for s in range(self.steps_per_epoch):
            scale = None
            if self.schedule != "constant":
                progress = (self.ep.double() + s / self.steps_per_epoch) / self.epochs
                scale = lr_schedule_scale(self.schedule, progress, self.lr_floor)
            self.coef.copy_(adamw_coefficients(self.step, self.hyp, scale))
            if not self.full_batch:
                idx = perm[:, s * self.batch:(s + 1) * self.batch]
            for c0 in live:
                sl = slice(c0, c0 + c)
                if self.full_batch:
                    x, y = d.x_train, d.y_train.unsqueeze(0).expand(c, *d.y_train.shape)
                else:
                    x, y = d.x_train[idx[sl]], d.y_train[idx[sl]]
                t0 = time.perf_counter() if self.stats["first_step_s"] is None else None
                self._call_step(sl, x, y)
                if t0 is not None:
                    self.stats["first_step_s"] = time.perf_counter() - t0
        self.stats["steps"] += self.steps_per_epoch
        self.stats["model_steps"] += self.steps_per_epoch * sum(m is not None for m in self.members)

    def _pad_split(self, split: str):
        """(x, y, w, n, ‖y‖, block rows) of an eval split, padded to whole row blocks."""
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        n = x.shape[0]
        rows = max(1, min(n, _EVAL_BUDGET_ELEMS // (self.chunk * max(self.shape.width, 1))))
        pad = math.ceil(n / rows) * rows - n
        w = torch.ones(n + pad, device=self.device)
        w[n:] = 0
        xp = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        yp = torch.cat([y, y.new_zeros(pad, y.shape[1])])
        return xp, yp, w, n, float(torch.linalg.vector_norm(y.double())), rows

    @torch.no_grad()
    def _metrics(self, split: str, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``[K]`` float64 error of every slot on a split (device tensor, no sync).

        ``weights`` defaults to the current ones (``self.flat``); pass ``self.best`` to
        score the weights each member's selection picked.
        """
        flat = self.flat if weights is None else weights
        x, y, w, n, y_norm, rows = self._eval_sets[split]
        sq = torch.zeros(self.capacity, dtype=torch.float64, device=self.device)
        mx = torch.zeros(self.capacity, device=self.device)
        c = self.chunk
        for c0 in range(0, self.capacity, c):
            if not any(self.members[c0:c0 + c]):
                continue
            p = flat if c == self.capacity else flat[c0:c0 + c]
            for r0 in range(0, x.shape[0], rows):
                r = slice(r0, r0 + rows)
                s_, m_ = self._dispatch("_eval_compiled", _eval_block,
                                        (self.layout.segments, p, x[r], y[r], w[r]))
                sq[c0:c0 + c] += s_
                mx[c0:c0 + c] = torch.maximum(mx[c0:c0 + c], m_)
        mse = sq / (n * y.shape[1])
        return {"mse": mse, "rmse": mse.sqrt(), "max_abs": mx.double(),
                "rel_l2": sq.sqrt() / y_norm}[self.metric]

    def _report_round(self, due: list[int]):
        """Report due members, keep best weights, finish/prune/stop/diverge, refill, compact.

        One host sync for train loss + val error; a second only when someone finishes,
        for the test error of their best-val weights (so test error is measured only for
        finishing members, and always on the weights their selection picked).
        """
        t0 = time.perf_counter()
        cols = [self.acc.double() / self.steps_per_epoch, self._metrics("val")]
        vals = torch.stack(cols, dim=1).tolist()
        now = time.perf_counter()
        self.stats["eval_s"] += now - t0
        improved, reports, finishing = [], [], {}
        for slot in due:
            mem = self.members[slot]
            tl, ve = vals[slot]
            mem.train_loss.append((mem.epoch, tl))
            mem.val_error.append((mem.epoch, ve))
            if not (math.isfinite(tl) and math.isfinite(ve)):
                finishing[slot] = "diverged"
                continue
            if not ve >= mem.best_val:          # also true while best_val is NaN
                if not ve >= mem.best_val * (1.0 - self.min_delta):
                    mem.stale_reports = 0
                else:
                    mem.stale_reports += 1
                mem.best_val, mem.best_epoch = ve, mem.epoch
                improved.append(slot)
            else:
                mem.stale_reports += 1
            if (self.threshold is not None and mem.threshold_epoch is None
                    and ve <= self.threshold):
                mem.threshold_epoch = mem.epoch
            reports.append((slot, Report(mem.spec.key, mem.epoch, tl, ve)))
        if improved:
            idx = torch.tensor(improved, device=self.device)
            self.best[idx] = self.flat[idx]
        for slot in self._ask_prune(reports):
            finishing[slot] = "pruned"
        for slot, _ in reports:
            if slot in finishing:
                continue
            mem = self.members[slot]
            if mem.epoch >= self.epochs:
                finishing[slot] = "completed"
            elif self.patience is not None and mem.stale_reports >= self.patience:
                finishing[slot] = "stopped"
        finished_ok = [sl for sl, st in finishing.items() if st in ("completed", "stopped")]
        if finished_ok and self.finish_iterations > 0:
            self._quasi_newton_finish(finished_ok)
        if finishing:
            test = self._metrics("test", self.best).tolist()
            now = time.perf_counter()
            for slot, state in finishing.items():
                self._finish(slot, state, math.nan if state == "diverged" else test[slot], now)
        self._refill()
        self._compact()
        self.stats["report_rounds"] += 1

    def _quasi_newton_finish(self, slots: list[int]):
        """Batched L-BFGS (float64 unless asked otherwise) from the members' best-val
        weights (see module doc)."""
        t0 = time.perf_counter()
        idx = torch.tensor(slots, device=self.device)
        d, fdt = self.data, self.finish_dtype
        xt, yt = d.x_train.to(fdt), d.y_train.to(fdt)
        xv, yv = d.x_val.to(fdt), d.y_val.to(fdt)
        y_norm = float(torch.linalg.vector_norm(yv))

        def train_mse(q, members=None):   # members share the data: who they are is moot
            return (forward(self.shape, self.layout.views(q), xt) - yt).square().mean(dim=(1, 2))

        def val_error(q) -> list[float]:
            with torch.no_grad():
                diff = forward(self.shape, self.layout.views(q), xv) - yv
            return _error_of(diff, self.metric, y_norm).tolist()

        mems = [self.members[s] for s in slots]
        best_x = self.best[idx].to(fdt)
        best_v = [m.best_val for m in mems]
        base = [m.epoch for m in mems]
        every, last = self.finish_report_every, self.finish_iterations

        def on_iteration(it, x, f):
            if it % every and it != last:
                return
            vals, fs = val_error(x), f.tolist()
            for j, mem in enumerate(mems):
                mem.train_loss.append((base[j] + it, fs[j]))
                mem.val_error.append((base[j] + it, vals[j]))
                if math.isfinite(vals[j]) and not vals[j] >= best_v[j]:
                    best_v[j] = vals[j]
                    best_x[j] = x[j]
                    mem.best_val, mem.best_epoch = vals[j], base[j] + it

        x, _, active = lbfgs.minimize(train_mse, best_x.clone(), iterations=last,
                                      history=self.finish_history, on_iteration=on_iteration)
        if last % every:   # make sure the final point was looked at
            on_iteration(last, x, train_mse(x).detach())
        self.best[idx] = best_x.to(self.best.dtype)
        for j, mem in enumerate(mems):
            mem.finish_active = bool(active[j])
        self.stats["finish_s"] = self.stats.get("finish_s", 0.0) + time.perf_counter() - t0

    def _ask_prune(self, reports: list[tuple[int, Report]]) -> list[int]:
        """Slots the source prunes: the whole round at once when it can judge peers."""
        if not reports:
            return []
        batch = getattr(self._source, "on_report_round", None)
        if batch is not None:
            keys = set(batch([r for _, r in reports]))
            return [slot for slot, r in reports if r.key in keys]
        return [slot for slot, r in reports
                if self._source.on_report(r.key, r.epoch, r.train_loss, r.val_error)]

    def _undertrained(self, mem: _Member, state: str) -> bool:
        """Still improving when training ended: over the last quarter of its epochs (Adam
        only), or — after a quasi-Newton finish — L-BFGS had not converged and its own
        last quarter still improved."""
        if self.finish_iterations > 0 and state in ("completed", "stopped"):
            tail = [(e - mem.epoch, v) for e, v in mem.val_error if e > mem.epoch]
            return mem.finish_active and still_improving(tail)
        return state == "completed" and still_improving(mem.val_error)

    def _finish(self, slot: int, state: str, test_error: float, now: float):
        """``state`` 'stopped' (early stopping) is recorded as completed + stopped_early."""
        mem = self.members[slot]
        stopped = state == "stopped"
        res = MemberResult(
            key=mem.spec.key, state="completed" if stopped else state, epochs=mem.epoch,
            train_loss=mem.train_loss, val_error=mem.val_error, best_val=mem.best_val,
            test_error=test_error, epochs_to_threshold=mem.threshold_epoch,
            wall_time_s=mem.wall(now), spec=mem.spec,
            params=self.layout.unpack(self.best[slot]) if self.keep_params else None,
            best_epoch=mem.best_epoch, stopped_early=stopped,
            undertrained=self._undertrained(mem, state),
            baseline_val=self.baseline_val)
        self._free(slot)
        self._source.on_finish(res)

    def run(self, source: Source, *, checkpoint_every: int | None = None,
            on_checkpoint: Callable[[dict], None] | None = None,
            resume: dict | None = None) -> None:
        """Train until the source is exhausted and every slot is empty.

        With ``resume`` (a `state_dict`), members in flight continue exactly where they
        were; the source is asked only for members that start after the checkpoint.
        """
        self._source = source
        if resume is not None:
            self.load_state_dict(resume)
        else:
            self._refill()
        prev = _set_matmul_precision(self.settings["matmul_precision"], self.device)
        try:
            while any(m is not None for m in self.members):
                t0 = time.perf_counter()
                self._train_epoch()
                self.stats["train_s"] += time.perf_counter() - t0
                due = []
                for slot, mem in enumerate(self.members):
                    if mem is not None:
                        mem.epoch += 1
                        if mem.epoch % self.report_every == 0 or mem.epoch >= self.epochs:
                            due.append(slot)
                self.ep += 1
                if due:
                    self._report_round(due)
                    if (checkpoint_every and on_checkpoint is not None
                            and self.stats["report_rounds"] % checkpoint_every == 0):
                        on_checkpoint(self.state_dict())
        finally:
            _set_matmul_precision(prev, self.device)

    # ------------------------------------------------------------------ checkpointing

    def _config(self) -> dict:
        return {"epochs": self.epochs, "report_every": self.report_every,
                "batch_size": self.batch, "full_batch": self.full_batch,
                "metric": self.metric, "threshold": self.threshold,
                "schedule": self.schedule, "lr_floor": self.lr_floor,
                "patience": self.patience, "min_delta": self.min_delta,
                "finish_iterations": self.finish_iterations, "finish_history": self.finish_history,
                # only when not the default, so checkpoints from before the option still load
                **({"finish_dtype": str(self.finish_dtype)} if self.finish_dtype != torch.float64 else {})}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (taken at a report boundary)."""
        now = time.perf_counter()
        cpu = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
        return {
            "version": _STATE_VERSION, "shape": self.shape.describe(),
            "config": self._config(),
            "capacity": self.capacity, "slots": self.slots, "chunk": self.chunk,
            "flat": cpu(self.flat), "best": cpu(self.best), "m": cpu(self.m), "v": cpu(self.v),
            "step": cpu(self.step), "hyp": cpu(self.hyp), "seeds": cpu(self.seeds),
            "ep": cpu(self.ep),
            "members": [None if m is None else m.to_state(now) for m in self.members],
            "exhausted": self.exhausted, "stats": dict(self.stats),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported cohort state version {state.get('version')!r}")
        if state["shape"] != self.shape.describe():
            raise ValueError(f"state is for shape {state['shape']}, "
                             f"cohort is {self.shape.describe()}")
        if state["config"] != self._config():
            raise ValueError(f"state was trained with {state['config']}, "
                             f"cohort has {self._config()}")
        self.capacity, self.slots, self.chunk = state["capacity"], state["slots"], state["chunk"]
        self.settings.update(capacity=self.capacity, chunk=self.chunk)
        self._alloc(self.capacity)
        for name in ("flat", "best", "m", "v", "step", "hyp", "seeds", "ep"):
            getattr(self, name).copy_(state[name])
        now = time.perf_counter()
        self.members = [None if d is None else _Member.from_state(d, now) for d in state["members"]]
        self.exhausted = state["exhausted"]
        self.stats = dict(state["stats"])


def still_improving(val_error: list[tuple[int, float]], rel: float = UNDERTRAINED_REL) -> bool:
    """True when the best val of the last quarter of epochs beat everything before it
    by more than ``rel``: the curve was still falling when training stopped."""
    pts = [(e, v) for e, v in val_error if math.isfinite(v)]
    if len(pts) < 4:
        return False
    cut = pts[-1][0] * 0.75
    before = [v for e, v in pts if e <= cut]
    after = [v for e, v in pts if e > cut]
    if not before or not after:
        return False
    return min(after) < min(before) * (1.0 - rel)


def _error_of(diff: torch.Tensor, metric: str, y_norm: float) -> torch.Tensor:
    """Per-member error ``[K]`` of residuals ``[K, N, d_out]`` (as `Cohort._metrics`)."""
    sq = diff.double().square().sum(dim=(1, 2))
    mse = sq / (diff.shape[1] * diff.shape[2])
    return {"mse": mse, "rmse": mse.sqrt(), "max_abs": diff.abs().amax(dim=(1, 2)).double(),
            "rel_l2": sq.sqrt() / y_norm}[metric]


@torch.no_grad()
def baseline_error(data, metric: str) -> float:
    """Val error of the mean predictor (the train targets' mean): what "not trained" is."""
    y = data.y_val.double()
    d = y - data.y_train.double().mean(dim=0, keepdim=True)
    return float(_error_of(d.unsqueeze(0), metric, float(torch.linalg.vector_norm(y)))[0])


def _set_matmul_precision(value: str, device: torch.device) -> str:
    """Set fp32 matmul precision for CUDA runs; returns the previous value to restore."""
    prev = torch.get_float32_matmul_precision()
    if device.type == "cuda":
        torch.set_float32_matmul_precision(value)
    return prev

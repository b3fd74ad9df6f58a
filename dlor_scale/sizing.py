"""Cohort sizing for ``cohort_size: auto``: how many members one cohort trains at once.

Why: a cohort stacks K members of one `Shape` into ``[K, ...]`` tensors, so one kernel
serves all of them. On a GPU, throughput grows with K until memory runs out, and the
right K differs by orders of magnitude between a 1e3-parameter dense net and a
128-layer DLoR net; a fixed number either wastes the device or runs out of memory.
So K is estimated from the shape and the free memory before the cohort starts.

Memory of one member (float32, 4 bytes a value; `member_breakdown`):

* **parameters** ``n_params × 4 copies``: value, gradient, Adam's m and v;
* **activations** for one forward/backward over ``rows`` rows: what autograd keeps for
  the backward pass, i.e. every hidden layer's input, the ``h V`` intermediate of low-rank and
  DLoR layers (rank ``r``; ``K·r`` for dlor_wide), the pre-activation where the
  activation needs it (gelu, silu, softplus; tanh, sigmoid and relu keep their output,
  the next layer's input) and the output; plus two widest-layer rows of working space
  for the gradients flowing back. `tests/test_sizing.py` checks it against the tensors
  autograd actually saves (the estimate is the larger, by the working space);
* **data gather** with minibatches: the member's own ``x``/``y`` rows and int64 indices
  (full batch shares one copy of the data between members).

Transient buffers (Adam's temporaries, allocator fragmentation, evaluation passes,
which the trainer runs in chunks of at most the training rows) are left to the safety
fraction: only ``SAFETY`` (60%) of the free memory is planned for.
"""

from __future__ import annotations

import math
import os

from .shapes import Shape, count_params

BYTES = 4  # float32
PARAM_COPIES = 4  # value, grad, Adam exp_avg, exp_avg_sq
INDEX_BYTES = 8  # int64 minibatch indices
#: Fraction of the free device memory a cohort plans for (the rest covers transients).
SAFETY = 0.6
#: Most members a CPU cohort packs (see `auto_slots`).
CPU_SLOTS = 64


#: Activations whose backward needs their *input* (tanh, sigmoid and relu keep their
#: output, which is the next layer's input and counted there anyway).
KEEPS_INPUT = ("gelu", "silu", "softplus")


def activation_floats(shape: Shape) -> int:
    """Values one member saves per training row for its backward pass (see module doc)."""
    layers = shape.layers()
    keeps_pre = shape.activation in KEEPS_INPUT
    total = shape.d_out  # the output, kept by the loss
    for i, layer in enumerate(layers):
        if i > 0:  # the layer's input, kept by the matmul for the weight gradient; the
            total += layer.n_in  # first layer's input is data (shared, or the gather)
        if layer.kind != "dense":
            total += layer.rank  # t = h V, kept for U's gradient
        if keeps_pre and i < len(layers) - 1:
            total += layer.n_out  # the pre-activation
    widest = max(max(layer.n_in, layer.n_out) for layer in layers)
    return total + 2 * widest


def member_breakdown(shape: Shape, rows: int, *, minibatch: bool = False) -> dict[str, int]:
    """Bytes one member needs while training on ``rows`` rows: params, activations, data."""
    if rows < 1:
        raise ValueError(f"rows must be ≥ 1, got {rows}")
    params = count_params(shape).total * PARAM_COPIES * BYTES
    acts = rows * activation_floats(shape) * BYTES
    data = rows * ((shape.d_in + shape.d_out) * BYTES + INDEX_BYTES) if minibatch else 0
    return {"params": params, "activations": acts, "data": data, "total": params + acts + data}


def member_bytes(shape: Shape, rows: int, *, minibatch: bool = False) -> int:
    """Estimated bytes of one member training on ``rows`` rows (for logging and sizing)."""
    return member_breakdown(shape, rows, minibatch=minibatch)["total"]


def _host_available() -> int | None:
    """MemAvailable of the host (Linux), or None when it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def auto_slots(
    shape: Shape,
    *,
    trials: int,
    n_train: int,
    batch_size: int | None,
    device: str,
    free_bytes: int | None = None,
    cap: int = 4096,
    safety: float = SAFETY,
    share: float = 1.0,
) -> int:
    """Members to pack in one cohort: ``min(trials, cap, ⌊usable / member_bytes⌋)``, ≥ 1.

    ``rows`` is ``batch_size`` (minibatch; each member then gathers its own rows) or
    ``n_train`` (full batch, ``batch_size`` None or ≥ n_train).

    CUDA (``cuda``, ``cuda:N``, or ``auto`` with a GPU): usable = ``safety`` × the free
    memory from ``torch.cuda.mem_get_info`` (or ``free_bytes`` when given, e.g. in tests),
    less one copy of the training data. With a fractional Ray GPU (``share`` < 1, e.g.
    ``resources.gpu: 0.25``) cohorts that start together would each see the whole free
    memory, so a cohort plans for at most ``share`` × the device's total.

    CPU: at most ``CPU_SLOTS`` (64). A CPU trial runs on its one or two Ray CPUs; the
    batched matmuls are already compute-bound well below 64 members, so more slots add
    no members per second, only a longer step, later validation reports (the pruner
    and TPE see results later) and bigger checkpoints. Host memory still bounds it
    (``free_bytes``, else MemAvailable), since deep/wide shapes at 1e5 parameters need
    hundreds of MB of activations per member.
    """
    if trials < 1 or cap < 1:
        raise ValueError(f"trials and cap must be ≥ 1, got trials={trials}, cap={cap}")
    if not 0 < safety <= 1 or not 0 < share <= 1:
        raise ValueError(f"safety and share must lie in (0, 1], got safety={safety}, share={share}")
    full = batch_size is None or batch_size >= n_train
    rows = n_train if full else batch_size
    per_member = member_bytes(shape, rows, minibatch=not full)
    shared = n_train * (shape.d_in + shape.d_out) * BYTES

    kind = device.split(":", 1)[0]
    if kind == "auto":
        import torch
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        total = free_bytes
        if free_bytes is None:
            import torch
            dev = torch.device(device if device != "auto" else "cuda")
            free_bytes, total = torch.cuda.mem_get_info(dev)
        room = min(free_bytes, share * total)
        limit = cap
    elif kind == "cpu":
        room = free_bytes if free_bytes is not None else _host_available()
        limit = min(cap, CPU_SLOTS)
    else:
        raise ValueError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:<n>, auto")
    if room is None:  # host memory unknown: trust the CPU cap
        return max(1, min(trials, limit))
    fit = math.floor((safety * room - shared) / per_member)
    return max(1, min(trials, limit, fit))


def cohort_slots(cohort_size: int | str, shape: Shape, *, trials: int, n_train: int,
                 batch_size: int | None, device: str, share: float = 1.0,
                 free_bytes: int | None = None) -> int | None:
    """The one place that decides a cohort's slots: the plan (so ``--dry-run`` and
    ``validate``) and the worker both call it, so the dry run shows what runs.

    A number: that many, never more than the members to train. ``auto``: `auto_slots`
    for ``device`` (resolved: ``cpu`` or ``cuda``). On a GPU that needs the device's free
    memory, so a plan made where no GPU is visible returns None ("sized on the worker's
    GPU") rather than a guess.
    """
    if trials < 1:
        raise ValueError(f"trials must be ≥ 1, got {trials}")
    if cohort_size != "auto":
        return max(1, min(int(cohort_size), trials))
    if device.split(":", 1)[0] == "cuda" and free_bytes is None:
        import torch   # only auto sizing for a GPU needs it: validate stays light otherwise
        if not torch.cuda.is_available():
            return None
    return auto_slots(shape, trials=trials, n_train=n_train, batch_size=batch_size, device=device,
                      share=share, free_bytes=free_bytes)

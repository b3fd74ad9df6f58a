"""Cohort sizing for ``cohort_size: auto``: the per-member memory estimate and the slots
it gives for a device with a known amount of free memory (no GPU needed: ``free_bytes``)."""

from __future__ import annotations

import pytest
import torch

from dlor_scale.models import Shape, forward, init_member
from dlor_scale.sizing import (
    CPU_SLOTS,
    SAFETY,
    activation_floats,
    auto_slots,
    member_breakdown,
    member_bytes,
)

SMALL = Shape("dense", d_in=4, d_out=1, width=8, depth=1)  # 121 parameters
DEEP = Shape("dlor_deep", 2, 1, 128, 77, 1, 1, "scalar")  # ~30k parameters, 77 layers
GiB = 1 << 30


def test_member_bytes_by_hand():
    """dense 4→8→8→1, tanh, 10 rows.
    params 121 × 4 copies × 4 B = 1936. Saved per row: the inputs of layers 2 and 3
    (8 + 8; layer 1's input is the data), the output 1 (tanh keeps its output, the next
    input, so no pre-activations), + 2 × widest 8 of working space = 33 values →
    10 × 33 × 4 B = 1320. Minibatch gather: 10 rows × ((4 + 1) × 4 B + 8 B index) = 280."""
    assert activation_floats(SMALL) == 33
    assert member_breakdown(SMALL, 10) == {"params": 1936, "activations": 1320, "data": 0, "total": 3256}
    assert member_bytes(SMALL, 10, minibatch=True) == 3256 + 280
    # gelu needs its input too: + 8 + 8 pre-activation values of the two hidden layers
    assert activation_floats(SMALL.with_(activation="gelu")) == 33 + 16
    # low-rank layers also keep t = h V (rank values a row): dlor_wide's rank is K·r
    wide = Shape("dlor_wide", 2, 1, 16, 1, 1, 5, "scalar")
    assert activation_floats(wide) == 1 + (16 + 16) + 5 + 2 * 16
    with pytest.raises(ValueError, match="rows"):
        member_bytes(SMALL, 0)


def test_slots_match_the_formula_on_cuda():
    """⌊(0.6 × free − one copy of the training data) / member⌋, capped by trials and cap."""
    free = 10 * 1024 * 1024
    per = member_bytes(SMALL, 256, minibatch=True)
    shared = 4096 * (4 + 1) * 4
    want = int((SAFETY * free - shared) // per)
    assert 1 < want < 10_000
    kw = dict(n_train=4096, batch_size=256, device="cuda", free_bytes=free)
    assert auto_slots(SMALL, trials=10_000, cap=10_000, **kw) == want
    assert auto_slots(SMALL, trials=10_000, cap=50, **kw) == 50
    assert auto_slots(SMALL, trials=7, **kw) == 7
    assert auto_slots(SMALL, trials=10_000, cap=10_000, device="cuda:1", n_train=4096, batch_size=256,
                      free_bytes=free) == want


@pytest.mark.parametrize("shape", [SMALL, DEEP])
def test_slots_grow_with_memory_and_stay_in_bounds(shape):
    kw = dict(trials=500, n_train=16384, batch_size=1024, device="cuda")
    slots = [auto_slots(shape, free_bytes=f, **kw) for f in (0, 1 << 20, 64 << 20, GiB, 16 * GiB, 140 * GiB)]
    assert slots == sorted(slots)
    assert all(1 <= s <= 500 for s in slots)
    assert slots[0] == 1  # never below one member, even when nothing seems to fit
    assert slots[-1] > slots[2]


def test_bigger_shapes_and_full_batches_get_fewer_slots():
    kw = dict(trials=4096, device="cuda", free_bytes=8 * GiB)
    small = auto_slots(SMALL, n_train=16384, batch_size=1024, **kw)
    deep = auto_slots(DEEP, n_train=16384, batch_size=1024, **kw)
    full = auto_slots(DEEP, n_train=16384, batch_size=None, **kw)
    assert small > deep > full >= 1
    # a batch as large as the training set is full batch: no per-member gather
    assert auto_slots(DEEP, n_train=16384, batch_size=16384, **kw) == full


def test_fractional_gpu_plans_for_its_share():
    """Four cohorts on one GPU (resources.gpu 0.25) each plan for a quarter of it."""
    kw = dict(trials=100_000, cap=100_000, n_train=1024, batch_size=None, device="cuda", free_bytes=4 * GiB)
    whole = auto_slots(DEEP, **kw)
    quarter = auto_slots(DEEP, share=0.25, **kw)
    assert quarter == pytest.approx(whole / 4, rel=0.01)


def test_cpu_packs_at_most_64():
    assert CPU_SLOTS == 64
    kw = dict(n_train=1024, batch_size=None, device="cpu")
    assert auto_slots(SMALL, trials=500, free_bytes=64 * GiB, **kw) == 64
    assert auto_slots(SMALL, trials=500, **kw) == 64  # host memory: plenty for 121 parameters
    assert auto_slots(SMALL, trials=12, free_bytes=64 * GiB, **kw) == 12
    assert auto_slots(SMALL, trials=500, cap=8, free_bytes=64 * GiB, **kw) == 8
    # host memory still bounds a big shape
    assert auto_slots(DEEP, trials=500, free_bytes=GiB, n_train=16384, batch_size=None, device="cpu") < 64
    if not torch.cuda.is_available():
        assert auto_slots(SMALL, trials=500, device="auto", n_train=1024, batch_size=None) == 64


@pytest.mark.parametrize("kw, match", [
    (dict(trials=0), "trials"), (dict(cap=0), "cap"), (dict(safety=0.0), "safety"),
    (dict(share=1.5), "share"), (dict(device="tpu"), "unknown device"),
])
def test_bad_arguments(kw, match):
    args = {**dict(trials=8, n_train=64, batch_size=None, device="cpu", free_bytes=GiB), **kw}
    with pytest.raises(ValueError, match=match):
        auto_slots(SMALL, **args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_reads_free_memory():
    n = auto_slots(SMALL, trials=64, n_train=1024, batch_size=None, device="cuda")
    assert 1 <= n <= 64


# --------------------------------------------------------------------------- against autograd


def saved_bytes_per_member(shape: Shape, k: int, rows: int) -> float:
    """Bytes autograd keeps for backward in one stacked forward + loss, per member
    (parameters, which `member_breakdown` counts separately, left out)."""
    members = [init_member(shape, seed) for seed in range(k)]
    params = {n: torch.stack([m[n] for m in members]).requires_grad_() for n in members[0]}
    param_storage = {p.untyped_storage().data_ptr() for p in params.values()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in param_storage:
            seen[st.data_ptr()] = st.nbytes()
        return t

    x, y = torch.randn(rows, shape.d_in), torch.randn(rows, shape.d_out)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ((forward(shape, params, x) - y) ** 2).mean()
    return sum(seen.values()) / k


@pytest.mark.parametrize("shape", [
    Shape("dense", 2, 1, 64, 3),
    Shape("lowrank", 4, 1, 32, 4, 4),
    Shape("rank1", 3, 2, 16, 3),
    Shape("dlor_deep", 2, 1, 32, 10, 2, 1, "full"),
    Shape("dlor_wide", 2, 1, 32, 2, 1, 8, "sparse:4"),
])
@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu"])
def test_activation_estimate_matches_what_autograd_saves(shape, activation):
    """Without its working-space rows the estimate is what autograd saves (within 3%;
    the shared input, 1/k of it a member, is data, not activations), with them never less."""
    shape, rows = shape.with_(activation=activation), 64
    measured = saved_bytes_per_member(shape, k=4, rows=rows)
    est = member_breakdown(shape, rows)["activations"]
    widest = max(max(layer.n_in, layer.n_out) for layer in shape.layers())
    saved_only = est - rows * 2 * widest * 4
    assert est >= measured
    assert saved_only == pytest.approx(measured, rel=0.03)

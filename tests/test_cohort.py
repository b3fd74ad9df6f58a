"""Cohort trainer: stacked training must equal training each member alone.

The reference for every member is `models.Member` + `torch.optim.AdamW` fed the same
batches (`member_order` of its own seed and epoch). Relative difference of a tensor is
``max|a − b| / max|b|`` (elementwise relative error is meaningless for entries near 0).
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from dlor_scale import cohort as cohort_mod
from dlor_scale.cohort import Cohort, FlatLayout, MemberSpec, member_order
from dlor_scale.models import Member, Shape, forward, init_member
from dlor_scale.targets import Dataset

TOL = 1e-5


@pytest.fixture(autouse=True)
def one_thread():
    """Single-threaded kernels: on a loaded 2-core box, OpenMP barriers of tiny ops
    wait for time slices (~10 ms each) and dominate the test time."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def make_data(n_train=80, n_eval=48, d_in=3, d_out=2, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, d_out, generator=g)

    def split(n):
        x = torch.rand(n, d_in, generator=g) * 2 - 1
        return x, torch.sin(2 * x @ w) + 0.1 * x[:, :1]

    (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(n_eval), split(n_eval)
    return Dataset("test", xt, yt, xv, yv, xs, ys)


class ListSource:
    """Deterministic source: hands out specs in order, prunes keys at given epochs."""

    def __init__(self, specs, prune_at=None):
        self.specs = list(specs)
        self.given = 0
        self.prune_at = prune_at or {}
        self.reports: list[tuple] = []
        self.results = {}

    def next_member(self):
        if self.given >= len(self.specs):
            return None
        self.given += 1
        return self.specs[self.given - 1]

    def on_report(self, key, epoch, train_loss, val_error):
        self.reports.append((key, epoch, train_loss, val_error))
        return epoch >= self.prune_at.get(key, math.inf)

    def on_finish(self, result):
        assert result.key not in self.results, "member finished twice"
        self.results[result.key] = result


def reference(shape, data, spec, epochs, batch_size):
    """Train one member alone: Member + torch.optim.AdamW on the cohort's batch order."""
    net = Member(shape, init_member(shape, spec.seed, spec.init_scale))
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2),
                            eps=1e-8, weight_decay=spec.weight_decay)
    n = data.x_train.shape[0]
    epoch_losses = []
    for epoch in range(epochs):
        if batch_size is None:
            batches = [torch.arange(n)]
        else:
            perm = member_order(torch.tensor([spec.seed]), torch.tensor([epoch]), n)[0]
            batches = [perm[s * batch_size:(s + 1) * batch_size] for s in range(n // batch_size)]
        losses = []
        for idx in batches:
            loss = (net(data.x_train[idx]) - data.y_train[idx]).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        epoch_losses.append(sum(losses) / len(losses))
    return {k: t.detach() for k, t in net.named_tensors().items()}, epoch_losses


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def max_param_diff(p, q) -> float:
    assert p.keys() == q.keys()
    return max(rel_diff(p[k], q[k]) for k in p)


def specs(n, lr=3e-3):
    return [MemberSpec(f"m{i}", seed=100 + i, lr=lr * (1 + i), weight_decay=0.01 * (i % 3),
                       init_scale=1.0 + 0.25 * i, beta1=0.9 - 0.05 * (i % 2),
                       beta2=0.999 - 0.009 * (i % 2)) for i in range(n)]


SHAPES = {
    "dense": Shape("dense", d_in=3, d_out=2, width=8, depth=2),
    "full": Shape("dlor_deep", d_in=3, d_out=2, width=8, depth=2, rank=2, diag="full"),
    "scalar": Shape("dlor_deep", d_in=3, d_out=2, width=8, depth=2, rank=2, diag="scalar"),
    "sparse": Shape("dlor_deep", d_in=3, d_out=2, width=8, depth=2, rank=2, diag="sparse:3"),
    "none": Shape("dlor_deep", d_in=3, d_out=2, width=8, depth=2, rank=2, diag="none"),
}


# ----------------------------------------------------------------------------- 1. equivalence

@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("batch_size", [None, 16])
def test_cohort_equals_members_trained_alone(name, batch_size):
    """3 slots, 4 members: m1 is pruned at its first report and m3 refills its slot
    mid-run; 50 optimizer steps for the members that complete."""
    shape, data = SHAPES[name], make_data()
    epochs, every = (50, 10) if batch_size is None else (10, 2)   # 50 steps either way
    src = ListSource(specs(4), prune_at={"m1": every})
    co = Cohort(shape, data, slots=3, epochs=epochs, report_every=every,
                batch_size=batch_size, compile=False, keep_params=True,
                chunk=2 if name == "full" else None)
    co.run(src)
    res = src.results
    assert sorted(res) == ["m0", "m1", "m2", "m3"]
    assert res["m1"].state == "pruned" and res["m1"].epochs == every
    assert all(res[k].state == "completed" and res[k].epochs == epochs for k in ("m0", "m2", "m3"))
    assert co.stats["compactions"] >= 1          # m3 trails alone at the end
    for key, r in res.items():
        _, ref_losses = reference(shape, data, r.spec, r.epochs, batch_size)
        ref_params, _ = reference(shape, data, r.spec, r.best_epoch, batch_size)
        assert max_param_diff(r.params, ref_params) <= TOL, key   # best-val weights
        for epoch, loss in r.train_loss:
            assert abs(loss - ref_losses[epoch - 1]) <= TOL * abs(ref_losses[epoch - 1]), key


def _errors(shape, params, x, y):
    out = forward(shape, {k: v.unsqueeze(0) for k, v in params.items()}, x)[0]
    return float((out - y).square().mean().sqrt())


def test_test_error_is_read_at_the_best_val_weights():
    """Select and score the same weights: a member whose val error peaks early (lr far too
    high, so it oscillates) reports the test error of its best-val epoch, not its last."""
    shape, data = SHAPES["dense"], make_data()
    spec = MemberSpec("hot", seed=3, lr=0.3)
    src = ListSource([spec])
    co = Cohort(shape, data, slots=1, epochs=60, report_every=5, compile=False, keep_params=True)
    co.run(src)
    r = src.results["hot"]
    vals = dict(r.val_error)
    assert r.best_epoch < r.epochs and vals[r.best_epoch] == r.best_val == min(vals.values())
    at_best, _ = reference(shape, data, spec, r.best_epoch, None)
    at_last, _ = reference(shape, data, spec, r.epochs, None)
    best_test = _errors(shape, at_best, data.x_test, data.y_test)
    last_test = _errors(shape, at_last, data.x_test, data.y_test)
    assert abs(r.test_error - best_test) <= 1e-4 * best_test
    assert abs(r.test_error - last_test) > 1e-3 * last_test   # the two really differ
    assert abs(_errors(shape, at_best, data.x_val, data.y_val) - r.best_val) <= 1e-4 * r.best_val


def test_cosine_schedule_matches_torch_lambda_lr():
    """The cohort's cosine decay is torch's AdamW under LambdaLR with the same factor."""
    shape, data = SHAPES["scalar"], make_data()
    spec = MemberSpec("c", seed=5, lr=2e-2, weight_decay=0.01)
    src = ListSource([spec])
    epochs = 30
    co = Cohort(shape, data, slots=2, epochs=epochs, report_every=epochs, compile=False,
                keep_params=True, schedule="cosine", lr_floor=0.05)
    co.run(src)
    net = Member(shape, init_member(shape, spec.seed, spec.init_scale))
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, eps=1e-8, weight_decay=spec.weight_decay)
    f = lambda e: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * e / epochs))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    for _ in range(epochs):
        loss = (net(data.x_train) - data.y_train).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    ref = {k: t.detach() for k, t in net.named_tensors().items()}
    r = src.results["c"]
    assert r.best_epoch == epochs
    assert max_param_diff(r.params, ref) <= TOL


def test_early_stopping_frees_the_slot_on_a_plateau():
    """lr = 0 never improves: the member stops after `patience` reports, its slot refills."""
    shape, data = SHAPES["dense"], make_data()
    src = ListSource([MemberSpec("flat", seed=1, lr=0.0), MemberSpec("next", seed=2, lr=1e-2)])
    co = Cohort(shape, data, slots=1, epochs=100, report_every=5, compile=False, patience=3)
    co.run(src)
    flat, nxt = src.results["flat"], src.results["next"]
    assert flat.state == "completed" and flat.stopped_early and flat.epochs == 20
    assert flat.best_epoch == 5 and not flat.undertrained
    assert nxt.epochs >= 20 and src.given == 2
    assert flat.baseline_val > 0 and math.isclose(flat.baseline_val, nxt.baseline_val)


def test_still_improving_flags_a_falling_curve_only():
    from dlor_scale.cohort import still_improving
    falling = [(e, 1.0 / e) for e in range(10, 110, 10)]
    flat = [(e, 1.0 / min(e, 50)) for e in range(10, 110, 10)]
    assert still_improving(falling) and not still_improving(flat)


def test_layout_round_trip_and_transposed_storage():
    shape = SHAPES["full"].with_(width=16)       # V [16, 2]: output dim 2 ≤ SKINNY < 16
    lay = FlatLayout(shape)
    p = init_member(shape, 7)
    row = lay.pack(p)
    assert row.shape == (lay.numel,)
    back = lay.unpack(row)
    assert all(torch.equal(back[k], p[k]) for k in p)
    stored_t = {e.name for e in lay.entries if e.transposed}
    assert "l1.V" in stored_t and "l3.W" in stored_t and "l1.U" not in stored_t


def test_member_order_is_a_pure_function_of_seed_and_epoch():
    seeds = torch.tensor([5, 9, 5, 2**40 + 5])
    epochs = torch.tensor([0, 0, 3, 0])
    perm = member_order(seeds, epochs, 100)
    assert all(torch.equal(torch.sort(row).values, torch.arange(100)) for row in perm)
    alone = member_order(torch.tensor([5]), torch.tensor([0]), 100)[0]
    assert torch.equal(perm[0], alone)                       # independent of other rows
    assert not torch.equal(perm[0], perm[1])                 # seed matters
    assert not torch.equal(perm[0], perm[2])                 # epoch matters
    assert not torch.equal(perm[0], perm[3])                 # high seed bits matter


# ----------------------------------------------------------------------------- 2. divergence

def test_diverging_member_is_isolated():
    shape, data = SHAPES["full"], make_data()
    good = specs(2)
    bad = MemberSpec("bad", seed=1, lr=1e30)

    def run(members):
        src = ListSource(members)
        Cohort(shape, data, slots=3, epochs=6, report_every=2, batch_size=16,
               compile=False, keep_params=True).run(src)
        return src.results

    with_bad, without = run([good[0], bad, good[1]]), run(good)
    assert with_bad["bad"].state == "diverged"
    assert with_bad["bad"].epochs == 2               # caught at its first report
    assert not math.isfinite(with_bad["bad"].val_error[-1][1])
    assert math.isnan(with_bad["bad"].test_error)     # no meaningful test error
    for key in ("m0", "m1"):
        a, b = with_bad[key], without[key]
        assert a.state == b.state == "completed"
        assert a.val_error == b.val_error and a.train_loss == b.train_loss
        assert max_param_diff(a.params, b.params) == 0.0


# ----------------------------------------------------------------------------- 3. behaviour

def test_single_slot_pruning_and_threshold():
    shape, data = SHAPES["full"], make_data()
    src = ListSource(specs(2, lr=1e-2), prune_at={"m1": 4})
    co = Cohort(shape, data, slots=1, epochs=12, report_every=2, batch_size=16,
                compile=False, threshold=0.54)
    co.run(src)
    m0, m1 = src.results["m0"], src.results["m1"]
    assert m0.state == "completed" and [e for e, _ in m0.val_error] == [2, 4, 6, 8, 10, 12]
    assert m1.state == "pruned" and m1.epochs == 4 and len(m1.val_error) == 2
    for r in (m0, m1):
        vals = [v for _, v in r.val_error]
        assert r.best_val == min(vals)
        hit = [e for e, v in r.val_error if v <= 0.54]
        assert r.epochs_to_threshold == (hit[0] if hit else None)
        assert r.wall_time_s > 0 and math.isfinite(r.test_error)
    assert m0.epochs_to_threshold is not None        # m0 reaches 0.54 RMSE mid-run
    assert [k for k, *_ in src.reports] == ["m0"] * 6 + ["m1"] * 2


@pytest.mark.parametrize("metric", ["mse", "rmse", "max_abs", "rel_l2"])
def test_metrics_match_direct_evaluation(metric):
    shape, data = SHAPES["scalar"], make_data()
    src = ListSource(specs(2))
    Cohort(shape, data, slots=2, epochs=3, report_every=3, batch_size=16, metric=metric,
           compile=False, keep_params=True).run(src)
    for r in src.results.values():
        net = Member(shape, r.params)
        with torch.no_grad():
            errs = []
            for x, y in ((data.x_val, data.y_val), (data.x_test, data.y_test)):
                d = (net(x) - y).double()
                errs.append({"mse": d.square().mean(), "rmse": d.square().mean().sqrt(),
                             "max_abs": d.abs().max(),
                             "rel_l2": d.norm() / y.double().norm()}[metric].item())
        assert r.val_error[-1][1] == pytest.approx(errs[0], rel=1e-5)
        assert r.test_error == pytest.approx(errs[1], rel=1e-5)


def _strip(results):
    return {k: (r.state, r.epochs, r.train_loss, r.val_error, r.best_val, r.test_error,
                r.epochs_to_threshold, {n: t.tolist() for n, t in r.params.items()})
            for k, r in results.items()}


def test_checkpoint_resume_is_exact():
    shape, data = SHAPES["full"], make_data()
    members, prune = specs(5), {"m1": 2, "m3": 4}
    kw = dict(slots=3, epochs=8, report_every=2, batch_size=16, compile=False,
              keep_params=True, threshold=0.6)

    full = ListSource(members, prune)
    checkpoints = []

    def keep(state):
        buf = io.BytesIO()
        torch.save(state, buf)                       # must be serialisable as is
        checkpoints.append((buf.getvalue(), full.given, copy.deepcopy(full.results)))

    Cohort(shape, data, **kw).run(full, checkpoint_every=1, on_checkpoint=keep)
    assert len(checkpoints) >= 3
    blob, given, done = checkpoints[1]               # mid-run: members in flight, one refilled
    state = torch.load(io.BytesIO(blob), weights_only=False)
    assert any(m is not None for m in state["members"])

    rest = ListSource(members, prune)
    rest.given = given                               # the source continues where it was
    rest.results = dict(done)
    Cohort(shape, data, **kw).run(rest, resume=state)
    assert rest.given == full.given                  # nobody in flight was asked for again
    assert _strip(rest.results) == _strip(full.results)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(cohort_mod.torch, "compile", broken_compile)
    shape, data = SHAPES["none"], make_data()
    src_c, src_e = ListSource(specs(2)), ListSource(specs(2))
    with pytest.warns(UserWarning, match="continuing in eager mode"):
        co = Cohort(shape, data, slots=2, epochs=2, report_every=1, batch_size=16, compile=True)
        co.run(src_c)
    assert co.settings["compile"] is False and "no compiler" in co.settings["compile_error"]
    Cohort(shape, data, slots=2, epochs=2, report_every=1, batch_size=16, compile=False).run(src_e)
    assert {k: r.val_error for k, r in src_c.results.items()} == \
           {k: r.val_error for k, r in src_e.results.items()}


# ----------------------------------------------------------------------------- 4. compiled path

@pytest.mark.parametrize("cat_grads", [False, True])
def test_compiled_step_matches_eager(cat_grads, monkeypatch):
    """torch.compile path (fused forward, skinny products, 2 chunks of 2) vs eager, with
    the flat gradient taken through the slices or concatenated per segment.

    Width 12 > SKINNY exercises the transposed storage of V and of the last W."""
    monkeypatch.setattr(cohort_mod, "_CAT_GRADS_MIN_P", 0 if cat_grads else 10**9)
    shape = Shape("dlor_deep", d_in=3, d_out=2, width=12, depth=1, rank=2, diag="full")
    data = make_data()
    out = {}
    for compiled in (False, True):
        src = ListSource(specs(5), prune_at={"m1": 2})
        co = Cohort(shape, data, slots=4, epochs=6, report_every=2, batch_size=16,
                    compile=compiled, keep_params=True, chunk=2)
        co.run(src)
        assert co.settings["compile"] is compiled
        out[compiled] = src.results
    for key, r in out[True].items():
        e = out[False][key]
        assert (r.state, r.epochs) == (e.state, e.epochs)
        assert max_param_diff(r.params, e.params) <= 1e-4, key
        for (_, a), (_, b) in zip(r.val_error, e.val_error):
            assert a == pytest.approx(b, rel=1e-4)


def test_fused_forward_matches_models_forward():
    """The compile-friendly forward is the same function as models.forward (eager)."""
    for shape in SHAPES.values():
        lay = FlatLayout(shape)
        flat = torch.stack([lay.pack(init_member(shape, s, 1.5)) for s in range(3)])
        x = torch.randn(3, 5, shape.d_in)
        a = cohort_mod.fused_forward(shape, lay.views(flat), x)
        b = forward(shape, lay.views(flat), x)
        assert rel_diff(a, b) <= 1e-6


def test_tanh_rational_is_tanh_to_a_few_ulp():
    x = torch.cat([torch.linspace(-12, 12, 200_001), torch.logspace(-9, 1, 20_001),
                   -torch.logspace(-9, 1, 20_001), torch.tensor([0.0, 4e-4, -4e-4])])
    ref = torch.tanh(x.double())
    got = cohort_mod.tanh_rational(x).double()
    assert (got - ref).abs().max() <= 4e-7
    rel = (got - ref).abs() / ref.abs().clamp_min(1e-30)
    assert rel.max() <= 4 * torch.finfo(torch.float32).eps
    g = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    cohort_mod._Tanh.apply(xr).backward(g)
    assert torch.allclose(xr.grad, g * (1 - got.float() ** 2))


def test_lbfgs_solves_independent_quadratics_exactly():
    """Batched L-BFGS on K different convex quadratics: each reaches its own minimiser,
    and a member's trajectory does not depend on who else is in the batch."""
    from dlor_scale import lbfgs
    g = torch.Generator().manual_seed(0)
    k, p = 4, 12
    a = torch.randn(k, p, p, generator=g, dtype=torch.float64)
    h = a @ a.transpose(1, 2) + 0.5 * torch.eye(p, dtype=torch.float64)
    b = torch.randn(k, p, generator=g, dtype=torch.float64)
    loss = lambda x, i: 0.5 * torch.einsum("kp,kpq,kq->k", x, h[i], x) - (b[i] * x).sum(-1)  # noqa: E731
    x, f, _ = lbfgs.minimize(loss, torch.zeros(k, p, dtype=torch.float64), iterations=200)
    exact = torch.linalg.solve(h, b)
    assert torch.allclose(x, exact, atol=1e-6)
    sub = lambda x, i: 0.5 * torch.einsum("kp,kpq,kq->k", x, h[:1][i], x) - (b[:1][i] * x).sum(-1)  # noqa: E731
    x1, _, _ = lbfgs.minimize(sub, torch.zeros(1, p, dtype=torch.float64), iterations=7)
    xk, _, _ = lbfgs.minimize(loss, torch.zeros(k, p, dtype=torch.float64), iterations=7)
    assert torch.allclose(x1[0], xk[0], atol=1e-12)


def test_lbfgs_evaluates_only_the_members_that_need_a_pass():
    """A member that backtracks costs passes of itself alone, and one that converged
    costs nothing more (a whole-batch pass per backtrack made a cohort's finish ~1.5×
    slower); every member still follows its solo trajectory."""
    from dlor_scale import lbfgs

    def rosenbrock(x):   # member 0: curved valley, backtracks often
        return ((1 - x[:, 0]) ** 2 + 100 * (x[:, 1] - x[:, 0] ** 2) ** 2)

    def quadratic(x):    # member 1: converges in a few iterations
        return 0.5 * (x * x).sum(-1)

    calls: list[list[int]] = []

    def loss(x, members):
        calls.append(members.tolist())
        out = torch.empty(len(members), dtype=x.dtype)
        for j, m in enumerate(members.tolist()):
            out[j] = (rosenbrock if m == 0 else quadratic)(x[j:j + 1])[0]
        return out

    x0 = torch.tensor([[-1.2, 1.0], [3.0, -2.0]], dtype=torch.float64)
    x, _, active = lbfgs.minimize(loss, x0, iterations=60)
    assert any(c == [0] for c in calls)                       # passes of member 0 alone
    last_one = max(i for i, c in enumerate(calls) if 1 in c)
    assert last_one < len(calls) - 10 and not active[1]       # member 1 converged, then idle
    solo, _, _ = lbfgs.minimize(lambda q, m: rosenbrock(q), x0[:1], iterations=60)
    assert torch.equal(solo[0], x[0])


@pytest.mark.parametrize("precision", ["fp64", "fp32"])
def test_quasi_newton_finish_lowers_error_and_scores_its_best_weights(precision):
    """The finish continues each completed member's curve past its epochs, only ever
    improves its best val, and test error is read at the finish's best-val weights —
    in float64 and in the cheaper float32 alike."""
    shape, data = SHAPES["scalar"], make_data()
    spec = MemberSpec("q", seed=4, lr=1e-2)
    runs = {}
    for iters in (0, 60):
        src = ListSource([MemberSpec(**{**spec.__dict__})])
        co = Cohort(shape, data, slots=2, epochs=40, report_every=10, compile=False,
                    keep_params=True, finish_iterations=iters, finish_precision=precision)
        co.run(src)
        runs[iters] = src.results["q"]
    assert co.finish_dtype == {"fp64": torch.float64, "fp32": torch.float32}[precision]
    adam, fin = runs[0], runs[60]
    assert fin.epochs == 40 and max(e for e, _ in fin.val_error) == 100
    assert fin.best_val < 0.9 * adam.best_val and fin.best_epoch > 40
    assert _errors(shape, fin.params, data.x_val, data.y_val) == pytest.approx(fin.best_val, rel=1e-4)
    assert _errors(shape, fin.params, data.x_test, data.y_test) == pytest.approx(fin.test_error, rel=1e-4)

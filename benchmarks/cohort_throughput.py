"""Cohort throughput: fused K-member training vs a per-member loop vs separate processes.

Measures model-steps/s (one optimizer step of one member) for each family and K:

* ``loop``  — the K members trained one after another in one process, each a
              `models.Member` with its own `torch.optim.AdamW` (eager): the naive baseline.
              Per-member cost does not depend on K, so at most 16 members are cycled.
* ``procs`` — the same loop split over P worker processes (default 2 = one per core,
              one thread each), each training K/P members: "one trial per process".
* ``fused`` — `Cohort.run` end to end (per-member data order + gather, fused compiled
              step, a report with its host sync every epoch of 8 steps).

Shared machines are noisy, so every method is timed in rounds (~0.3 s; one epoch for
fused) and the MEDIAN round rate is reported (best round in the raw lines). The same run
measures the fp32 matmul peak (best of repeated 1024² ``torch.mm``, same thread count),
so GFLOP/s can be read as a fraction of it. FLOPs per model-step count matmul work only
(forward 2·B·Σ mults, training = 3× forward); elementwise work is not counted.

Usage:  python benchmarks/cohort_throughput.py [--device cuda] [--ks 1,8,64,256]
The same script runs on CUDA (batch 1024 by default there; clocks read after a sync).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dlor_scale.cohort import Cohort, MemberSpec  # noqa: E402
from dlor_scale.models import Member, Shape, count_params, init_member  # noqa: E402
from dlor_scale.targets import Dataset  # noqa: E402

STEPS_PER_EPOCH = 8
ROUND_S = 0.3


def make_shape(family: str, a) -> Shape:
    return Shape(family, d_in=a.d_in, d_out=a.d_out, width=a.width, depth=a.depth,
                 rank=a.rank, diag="full" if family.startswith("dlor") else "none")


def train_flops(shape: Shape, batch: int) -> float:
    """Matmul FLOPs of one training step of one member (3 × forward)."""
    fwd = 0
    for layer in shape.layers():
        if layer.kind == "dense":
            fwd += 2 * layer.n_in * layer.n_out
        else:
            fwd += 2 * layer.rank * (layer.n_in + layer.n_out)
            if layer.kind == "dlor" and layer.diag != "none":
                fwd += 2 * layer.n_in
    return 3.0 * fwd * batch


def make_data(shape: Shape, batch: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    n = batch * STEPS_PER_EPOCH
    x = torch.rand(n, shape.d_in, generator=g) * 2 - 1
    y = torch.sin(3 * x.sum(1, keepdim=True)).repeat(1, shape.d_out)
    ev = 64   # tiny eval splits: the per-epoch report should cost ~nothing here
    return Dataset("bench", x, y, x[:ev], y[:ev], x[:ev], y[:ev])


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def stats(rates: list[float]) -> tuple[float, float]:
    return (statistics.median(rates), max(rates)) if rates else (math.nan, math.nan)


def matmul_peak(device: torch.device, n: int, seconds: float) -> float:
    """fp32 GFLOP/s of a square torch.mm (TF32 off): best of repeated single calls."""
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best


# ----------------------------------------------------------------------------- baselines

def loop_rates(shape: Shape, k: int, batch: int, device: str, seconds: float,
               threads: int, start_at: float | None = None) -> list[float]:
    """Per-round model-steps/s of k eager Member+AdamW trained round-robin."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    data = make_data(shape, batch).to(dev)
    nets = [Member(shape, init_member(shape, i)).to(dev) for i in range(k)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in nets]
    n = data.x_train.shape[0]
    g = torch.Generator().manual_seed(1)

    def one_pass():
        idx = torch.randint(0, n, (batch,), generator=g).to(dev)
        x, y = data.x_train[idx], data.y_train[idx]
        for net, opt in zip(nets, opts):
            loss = (net(x) - y).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    one_pass()
    sync(dev)
    if start_at is not None:               # concurrent workers start together
        while time.time() < start_at:
            time.sleep(0.002)
    rates, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < ROUND_S:
            one_pass()
            steps += k
            sync(dev)
        rates.append(steps / (time.perf_counter() - t0))
    return rates


def _worker(args):
    return loop_rates(*args)


def procs_rates(shape: Shape, k: int, batch: int, device: str, seconds: float,
                procs: int) -> tuple[float, float]:
    """(median, best) aggregate model-steps/s of `procs` concurrent single-thread workers."""
    procs = min(procs, k)
    shares = [k // procs + (i < k % procs) for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        start_at = time.time() + 10.0      # covers interpreter + torch import in workers
        per = pool.map(_worker, [(shape, min(s, 16), batch, device, seconds, 1, start_at)
                                 for s in shares])
    return sum(stats(r)[0] for r in per), sum(stats(r)[1] for r in per)


# ----------------------------------------------------------------------------- fused

class _TimedSource:
    """Starts k members; timestamps every epoch; prunes everyone once time is up."""

    def __init__(self, k: int, seconds: float, warm_epochs: int = 2):
        self.k, self.given, self.seconds, self.warm = k, 0, seconds, warm_epochs
        self.stamps: list[tuple[int, float]] = []
        self.stop_at = math.inf

    def next_member(self):
        if self.given == self.k:
            return None
        self.given += 1
        return MemberSpec(f"m{self.given}", seed=self.given, lr=1e-3)

    def on_report(self, key, epoch, train_loss, val_error):
        now = time.perf_counter()
        if not self.stamps or self.stamps[-1][0] != epoch:
            self.stamps.append((epoch, now))
            if epoch == self.warm:
                self.stop_at = now + self.seconds
        return now >= self.stop_at

    def on_finish(self, result):
        pass


def fused_rates(shape: Shape, k: int, batch: int, device: str, seconds: float, compile_mode):
    """(median, best, first-epoch seconds, settings): per-epoch rates after 2 warm epochs."""
    data = make_data(shape, batch)
    src = _TimedSource(k, seconds)
    co = Cohort(shape, data, slots=k, epochs=10 ** 6, report_every=1, batch_size=batch,
                device=device, compile=compile_mode)
    t0 = time.perf_counter()
    co.run(src)
    st = src.stamps
    rates = [k * STEPS_PER_EPOCH * (e1 - e0) / (t1 - t0_)
             for (e0, t0_), (e1, t1) in zip(st[1:], st[2:])]
    return (*stats(rates), st[0][1] - t0, co.settings)


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default="dlor_deep,dense")
    ap.add_argument("--ks", default="1,8,64,256")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--d-in", type=int, default=4)
    ap.add_argument("--d-out", type=int, default=1)
    ap.add_argument("--batch", type=int, default=None, help="default: 256 on CPU, 1024 on CUDA")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for loop and fused (default: all cores)")
    ap.add_argument("--procs", type=int, default=2, help="workers for the procs baseline")
    ap.add_argument("--compile", default="true", choices=["auto", "true", "false"])
    ap.add_argument("--skip", default="", help="comma list of baselines to skip: loop,procs")
    a = ap.parse_args()
    dev = torch.device(a.device)
    batch = a.batch or (1024 if dev.type == "cuda" else 256)
    threads = a.threads or os.cpu_count()
    torch.set_num_threads(threads)
    compile_mode = {"auto": "auto", "true": True, "false": False}[a.compile]
    skip = set(filter(None, a.skip.split(",")))

    gpu = f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else ""
    print(f"# cohort_throughput {time.strftime('%Y-%m-%d %H:%M:%S')} torch {torch.__version__} "
          f"device {dev}{gpu} {platform.machine()} cores={os.cpu_count()} threads={threads}")
    if hasattr(os, "getloadavg"):
        print("# load average at start: %.2f %.2f %.2f" % os.getloadavg())
    peak = matmul_peak(dev, 4096 if dev.type == "cuda" else 1024, 3.0)
    print(f"# fp32 matmul peak: {peak:.1f} GFLOP/s (best single torch.mm, {threads} threads)")
    print(f"# batch {batch}, width {a.width}, depth {a.depth}, rank {a.rank}, d_in {a.d_in}, "
          f"d_out {a.d_out}; model-steps/s, median of rounds [best]\n")
    hdr = (f"{'family':<9} {'params':>6} {'K':>4} {'loop':>6} {'procs':>6} {'fused':>6} "
           f"{'×loop':>6} {'×procs':>6} {'GFLOP/s':>7} {'%peak':>6} {'chunk':>5} {'1st-ep s':>8}  best: loop/procs/fused")
    print(hdr)
    print("-" * len(hdr))
    summary = []
    for fam in a.families.split(","):
        shape = make_shape(fam, a)
        flops = train_flops(shape, batch)
        for k in (int(s) for s in a.ks.split(",")):
            loop = (stats(loop_rates(shape, min(k, 16), batch, a.device, a.seconds, threads))
                    if "loop" not in skip else (math.nan, math.nan))
            torch.set_num_threads(threads)
            procs = (procs_rates(shape, k, batch, a.device, a.seconds, a.procs)
                     if "procs" not in skip else (math.nan, math.nan))
            med, best, first, st = fused_rates(shape, k, batch, a.device, a.seconds, compile_mode)
            gf = med * flops / 1e9
            print(f"{fam:<9} {count_params(shape).total:>6} {k:>4} {loop[0]:>6.0f} {procs[0]:>6.0f} "
                  f"{med:>6.0f} {med / loop[0]:>6.1f} {med / procs[0]:>6.1f} {gf:>7.2f} "
                  f"{100 * gf / peak:>5.1f}% {st['chunk']:>5} {first:>8.1f}  "
                  f"{loop[1]:.0f}/{procs[1]:.0f}/{best:.0f}", flush=True)
            summary.append((fam, k, procs[0], med, st))
    print("\n# members/s for 1000-step members (procs vs fused, medians):")
    for fam, k, pr, fu, st in summary:
        print(f"#   {fam:<9} K={k:<4} procs {pr / 1000:7.2f}   fused {fu / 1000:7.2f}")
    print(f"# fused settings (last): {summary[-1][4] if summary else {}}")
    if hasattr(os, "getloadavg"):
        print("# load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()

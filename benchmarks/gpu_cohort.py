"""GPU check + timing of packed cohorts, in one run (issue: GPU speed).

    python benchmarks/gpu_cohort.py                 # on a CUDA machine: full run
    python benchmarks/gpu_cohort.py --device cpu --quick   # smoke test of the script itself

Prints and writes (``--out``, default benchmarks/results/) a Markdown table and a JSON
file named after the card:

1. correctness: each cohort member vs the same member trained alone (`models.Member`
   + `torch.optim.AdamW`), max relative parameter difference after N steps;
2. model-steps/s, side by side: eager single model; 8 processes sharing the GPU;
   single model with the whole step in a CUDA graph; fused cohorts K ∈ {16, 256, 2048}
   for dense and dlor_deep (width 64, 8 hidden layers, rank 2, batch 1024);
3. ratios against eager and the 8-process baseline, and achieved TFLOP/s against the
   fp32 (and TF32) matmul peak measured in the same run.

Only torch, numpy and dlor_scale are needed (no Ray/Optuna/MLflow), so it runs on a
bare GPU box.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlor_scale.cohort import Cohort, MemberSpec  # noqa: E402
from dlor_scale.models import Member, Shape, init_member  # noqa: E402
from dlor_scale.targets import Dataset  # noqa: E402


def shape_for(family: str) -> Shape:
    return Shape(family, d_in=16, d_out=1, width=64, depth=8, rank=2, diag="scalar", activation="tanh")


def flops_per_step(shape: Shape, batch: int) -> float:
    """Matmul FLOPs of one training step (forward 2·MACs, backward 4·MACs) per row."""
    macs = 0
    for layer in shape.layers():
        macs += layer.n_in * layer.n_out if layer.kind == "dense" else layer.rank * (layer.n_in + layer.n_out)
    return 6.0 * macs * batch


def make_data(batch: int, device: str) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 16, generator=g) * 2 - 1
    y = torch.sin(x.sum(1, keepdim=True))
    return Dataset("bench", x, y, x[:256], y[:256], x[:256], y[:256], {}).to(device)


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, tf32: bool, n: int = 8192, reps: int = 20) -> float:
    """Measured dense fp32 (or TF32) matmul TFLOP/s: the roofline for 'achieved'."""
    if not device.startswith("cuda"):
        n, reps = 1024, 10
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    torch.backends.cuda.matmul.allow_tf32 = prev
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


# ----------------------------------------------------------------------------- single model

def eager_single(shape: Shape, data: Dataset, device: str, seconds: float) -> float:
    """Steps/s of one model trained eagerly (a plain one-model-per-trial Tune run)."""
    m = Member(shape, init_member(shape, 0)).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, y = data.x_train, data.y_train
    steps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(20):
            opt.zero_grad(set_to_none=True)
            loss = torch.mean((m(x) - y) ** 2)
            loss.backward()
            opt.step()
        steps += 20
        sync(device)
        if time.perf_counter() - t0 > seconds:
            return steps / (time.perf_counter() - t0)


def _proc_worker(args):
    family, device, seconds, batch = args
    torch.set_num_threads(1)
    return eager_single(shape_for(family), make_data(batch, device), device, seconds)


def multiprocess(family: str, device: str, seconds: float, batch: int, procs: int = 8) -> float:
    """Total steps/s of `procs` processes each training one model (fractional-GPU Tune)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        return sum(pool.map(_proc_worker, [(family, device, seconds, batch)] * procs))


def graphed_single(shape: Shape, data: Dataset, device: str, seconds: float) -> float | None:
    """Steps/s with forward+backward+AdamW captured in one CUDA graph (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    m = Member(shape, init_member(shape, 0)).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, capturable=True)
    x, y = data.x_train, data.y_train
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up on a side stream (required before capture)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            torch.mean((m(x) - y) ** 2).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        loss = torch.mean((m(x) - y) ** 2)
        loss.backward()
        opt.step()
    steps, t0 = 0, time.perf_counter()
    while True:
        for _ in range(50):
            g.replay()
        steps += 50
        torch.cuda.synchronize()
        if time.perf_counter() - t0 > seconds:
            return steps / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- cohorts

class _Fixed:
    def __init__(self, members):
        self.members = list(members)

    def next_member(self):
        return self.members.pop(0) if self.members else None

    def on_report(self, *a):
        return False

    def on_finish(self, result):
        pass


def fused(shape: Shape, data: Dataset, device: str, K: int, epochs: int, precision: str, compile) -> dict:
    """Model-steps/s of a K-member cohort (full batch: one step per epoch)."""
    members = [MemberSpec(key=f"m{i}", seed=i, lr=1e-3) for i in range(K)]
    c = Cohort(shape, data, slots=K, epochs=epochs, report_every=epochs, device=device,
               compile=compile, precision=precision)
    t0 = time.perf_counter()
    c.run(_Fixed(members))
    wall = time.perf_counter() - t0
    first = c.stats.get("first_step_s") or 0.0
    steady = max(c.stats["train_s"] - first, 1e-9)
    return {"K": K, "model_steps_per_s": c.stats["model_steps"] / steady, "wall_s": wall,
            "first_step_s": first, "settings": {k: str(v) for k, v in c.settings.items()}}


def correctness(shape: Shape, data: Dataset, device: str, precision: str, steps: int = 50) -> float:
    """Max relative parameter difference: cohort member vs the member trained alone."""
    K = 4
    specs = [MemberSpec(key=f"m{i}", seed=100 + i, lr=1e-3 * (i + 1), weight_decay=1e-4 * i) for i in range(K)]
    c = Cohort(shape, data, slots=K, epochs=steps, report_every=steps, device=device, compile=False,
               precision=precision, keep_params=True)
    results = []

    class Src(_Fixed):
        def on_finish(self, r):
            results.append(r)

    c.run(Src(specs))
    worst = 0.0
    for r in results:
        s = r.spec
        m = Member(shape, init_member(shape, s.seed, s.init_scale)).to(device)
        opt = torch.optim.AdamW(m.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(s.beta1, s.beta2))
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            torch.mean((m(data.x_train) - data.y_train) ** 2).backward()
            opt.step()
        for name, p in m.named_tensors().items():
            q = r.params[name].to(device)
            worst = max(worst, float((p.detach() - q).abs().max() / (q.abs().max() + 1e-12)))
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--ks", default="16,256,2048")
    ap.add_argument("--seconds", type=float, default=5.0, help="per single-model timing")
    ap.add_argument("--epochs", type=int, default=300, help="steps per fused timing")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test on CPU)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args(argv)
    if a.quick:
        a.batch, a.ks, a.seconds, a.epochs, a.procs = 128, "4,16", 0.5, 20, 2
    dev = a.device
    card = torch.cuda.get_device_name(0) if dev.startswith("cuda") else platform.processor() or "cpu"
    data = make_data(a.batch, dev)
    compile_mode = "auto"
    report = {"card": card, "torch": torch.__version__, "device": dev, "batch": a.batch,
              "precision": a.precision, "peak_fp32_tflops": matmul_peak(dev, False),
              "peak_tf32_tflops": matmul_peak(dev, True) if dev.startswith("cuda") else None, "families": {}}
    peak = report["peak_tf32_tflops"] if a.precision == "tf32" and report["peak_tf32_tflops"] else report["peak_fp32_tflops"]
    for family in ("dense", "dlor_deep"):
        shape = shape_for(family)
        fl = flops_per_step(shape, a.batch)
        row = {"flops_per_model_step": fl, "correctness_max_rel_diff": correctness(shape, data, dev, a.precision)}
        row["eager_single"] = eager_single(shape, data, dev, a.seconds)
        row["multiprocess"] = multiprocess(family, dev, a.seconds, a.batch, a.procs)
        row["cuda_graph_single"] = graphed_single(shape, data, dev, a.seconds)
        row["fused"] = [fused(shape, data, dev, int(k), a.epochs, a.precision, compile_mode)
                        for k in a.ks.split(",")]
        for f in row["fused"]:
            f["x_eager"] = f["model_steps_per_s"] / row["eager_single"]
            f["x_multiprocess"] = f["model_steps_per_s"] / row["multiprocess"]
            f["tflops"] = f["model_steps_per_s"] * fl / 1e12
            f["pct_peak"] = 100 * f["tflops"] / peak
        report["families"][family] = row
        print(json.dumps({family: row}, default=str), flush=True)

    lines = [f"# GPU cohort benchmark — {card}, torch {torch.__version__}, {a.precision}, batch {a.batch}", "",
             f"matmul peak: fp32 {report['peak_fp32_tflops']:.1f} TFLOP/s"
             + (f", TF32 {report['peak_tf32_tflops']:.1f}" if report["peak_tf32_tflops"] else ""), "",
             "| family | mode | model-steps/s | × eager | × 8-proc | TFLOP/s | % peak |", "|---|---|---:|---:|---:|---:|---:|"]
    for fam, row in report["families"].items():
        lines.append(f"| {fam} | eager single | {row['eager_single']:.0f} | 1 | | | |")
        lines.append(f"| {fam} | {a.procs} processes | {row['multiprocess']:.0f} | "
                     f"{row['multiprocess'] / row['eager_single']:.1f} | 1 | | |")
        if row["cuda_graph_single"]:
            lines.append(f"| {fam} | CUDA graph single | {row['cuda_graph_single']:.0f} | "
                         f"{row['cuda_graph_single'] / row['eager_single']:.1f} | | | |")
        for f in row["fused"]:
            lines.append(f"| {fam} | fused K={f['K']} | {f['model_steps_per_s']:.0f} | {f['x_eager']:.0f} | "
                         f"{f['x_multiprocess']:.1f} | {f['tflops']:.2f} | {f['pct_peak']:.1f} |")
        lines.append(f"| {fam} | correctness (max rel diff, 50 steps) | {row['correctness_max_rel_diff']:.2e} | | | | |")
    md = "\n".join(lines) + "\n"
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() else "_" for c in card)[:40] + ("_quick" if a.quick else "")
    (out / f"gpu_cohort_{tag}.md").write_text(md)
    (out / f"gpu_cohort_{tag}.json").write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()

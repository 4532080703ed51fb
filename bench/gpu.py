"""GPU speed and scale of lipcore: correctness, the four targets and each lever, one call.

On a CUDA machine, in at most ~8 minutes:
  a. correctness: certificate sound on a small case (lower_bound <= exact_w1), and the CUDA
     result equal to the CPU path on a full-batch case (no sampling: the same trajectory);
  b. target 1: 2000 steps, batch 4096, width 256, depth 4, d = 64: wall time, steady steps/s,
     achieved TFLOP/s of the step (counted matmul FLOPs, forward + backward + orthonormalisation)
     against the card's matrix rate measured here (big bf16 and tf32 matmuls); each lever on/off
     (precision float32/tf32/bf16, compile, cuda_graphs, ortho_iters);
  c. target 2: n = 10^6 per side, d = 64, X ~ N(0, I), Y ~ N(e1, I) (W1 = 1), data generated on
     the card, resident pipeline (training, export, exact spectral norms, float64 evaluation of
     all samples on the card): lower_bound and holdout within 1 % of 1, end to end time;
     also estimate_w1 on host arrays for comparison;
  d. target 3: n = 10^7 per side, d = 128, same pipeline, peak memory, <= 60 s;
  e. deel-torchlip (same architecture, batch, steps) when importable, else skipped;
  f. target 4: the service (subprocess, LIPWASS_DEVICE=cuda): 10^6 x 64 upload + job end to end,
     share of the time that is not training.
Prints one markdown table (card, date, command) for bench/RESULTS.md; JSON to --out / $OUT.

    .venv/bin/python bench/gpu.py --smoke           # CPU, tiny sizes, every code path, < 2 min
    python bench/gpu.py --out $OUT                  # on the GPU machine (see bench/GPU-NOTES.md)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lipcore import EstimatorConfig, default_device, estimate_w1, evaluate, exact_w1  # noqa: E402
from lipcore.accel import sync  # noqa: E402
from lipcore.envelope import envelope_of  # noqa: E402
from lipcore.estimate import TrainingData, certify, fit, hold_out  # noqa: E402
from lipcore.holdout import Split  # noqa: E402
from lipcore.network import LipschitzMLP  # noqa: E402
from lipcore.train import Progress, train  # noqa: E402

FULL = {
    "t1": {"d": 64, "width": 256, "depth": 4, "batch": 4096, "steps": 2000},
    "t2": {"n": 10**6, "d": 64, "steps": 2000, "batch": 4096},
    "t3": {"n": 10**7, "d": 128, "steps": 2000, "batch": 4096},
    "t4": {"n": 10**6, "d": 64, "steps": 2000, "batch": 4096},
    "deel_steps": 200,
    "matmul": 8192,
    "small_n": 400,
}
SMOKE = {
    "t1": {"d": 8, "width": 32, "depth": 2, "batch": 128, "steps": 20},
    "t2": {"n": 4000, "d": 8, "steps": 60, "batch": 256},
    "t3": {"n": 20000, "d": 16, "steps": 20, "batch": 256},
    "t4": {"n": 2000, "d": 8, "steps": 400, "batch": 256},
    "deel_steps": 5,
    "matmul": 256,
    "small_n": 120,
}


# --------------------------------------------------------------------------- FLOPs and rates


def step_flops(d: int, width: int, depth: int, batch: int, ortho_iters: int) -> int:
    """Matmul FLOPs of one training step (both batches of ``batch`` rows: 2 * batch rows).

    Forward: 2 * rows * in * out per layer (hidden layers and the last, width -> 1). Backward:
    twice the forward (gradients with respect to the input and to the weight), less the first
    layer's input gradient (the data needs none). Orthonormalisation (Björck, per hidden layer of
    shape (out, in), k = min(out, in)): per iteration a Gram matrix and a product, 2 * out * in * k
    each; its backward twice that. Elementwise work (GroupSort, Adam, bias) is not counted.
    """
    rows = 2 * batch
    dims = [d] + [width] * depth + [1]
    fwd = sum(2 * rows * dims[i] * dims[i + 1] for i in range(len(dims) - 1))
    bwd = 2 * fwd - 2 * rows * d * width
    ortho = sum(
        ortho_iters * 2 * (2 * dims[i + 1] * dims[i] * min(dims[i], dims[i + 1]))
        for i in range(depth)
    )
    return fwd + bwd + 3 * ortho


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, tf32: bool = False) -> float:
    """Measured TFLOP/s of a size x size matrix product (best of a few timed batches)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    old = torch.get_float32_matmul_precision()
    if tf32:
        torch.set_float32_matmul_precision("high")
    try:
        for _ in range(3):
            a @ b
        sync(device)
        best = math.inf
        reps = 10 if device.type == "cuda" else 2
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(device)
            best = min(best, (time.perf_counter() - t) / reps)
    finally:
        torch.set_float32_matmul_precision(old)
    return 2 * size**3 / best / 1e12


# --------------------------------------------------------------------------- training timing


def bench_config(**kw: Any) -> EstimatorConfig:
    """The benchmark's config: no early stop (fixed step count), progress every 100 steps (every
    tenth of the run when shorter: the steady rate needs a few timestamps)."""
    base = {"patience": 0, "progress_every": max(1, min(100, kw.get("steps", 1000) // 10))}
    base.update(kw)
    return EstimatorConfig(**base)


def time_training(
    config: EstimatorConfig, d: int, device: torch.device, seed: int = 0
) -> dict[str, Any]:
    """Trains on resident Gaussian data (N(0,I) vs N(e1,I), n = 8 batches); wall time of train()
    (compilation included) and the steady rate from the progress timestamps after the first 10 %
    of the steps (each timestamp follows a device sync: the objective read-back)."""
    n = 8 * config.batch_size
    gen = torch.Generator(device=device).manual_seed(seed)
    zx = torch.randn(n, d, device=device, generator=gen)
    zy = torch.randn(n, d, device=device, generator=gen)
    zy[:, 0] += 1.0
    w = torch.full((n,), 1.0 / n, device=device)
    net = LipschitzMLP(d, config, torch.Generator().manual_seed(seed)).to(device)
    marks: list[tuple[int, float]] = []

    def cb(p: Progress) -> None:
        marks.append((p.step, p.elapsed_s))

    sync(device)
    t = time.perf_counter()
    res = train(
        net, zx, w, zy, w, config, torch.Generator(device=device).manual_seed(seed + 1), callback=cb
    )
    sync(device)
    wall = time.perf_counter() - t
    warm = [m for m in marks if m[0] >= max(1, config.steps // 10)]
    if len(warm) >= 2 and warm[-1][1] > warm[0][1]:
        rate = (warm[-1][0] - warm[0][0]) / (warm[-1][1] - warm[0][1])
    else:
        rate = res.steps / wall
    flops = step_flops(d, config.width, config.depth, config.batch_size, config.ortho_iters)
    return {
        "wall_s": wall,
        "steps": res.steps,
        "steps_per_s": rate,
        "steady_s_for_all_steps": res.steps / rate,
        "first_report_s": marks[0][1] if marks else wall,
        "gflop_per_step": flops / 1e9,
        "tflops": flops * rate / 1e12,
        "objective": res.objective,
    }


def time_deel(
    d: int, width: int, depth: int, batch: int, steps: int, device: torch.device
) -> dict[str, Any] | None:
    """deel-torchlip's network (SpectralLinear + GroupSort2 + FrobeniusLinear), same batch, Adam,
    same data; None when deel-torchlip is not importable."""
    try:
        from bench.peers import deel_network
    except ImportError:
        return None
    net = deel_network(d, width, depth)
    if net is None:
        return None
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator(device=device).manual_seed(0)
    n = 8 * batch
    zx = torch.randn(n, d, device=device, generator=gen)
    zy = torch.randn(n, d, device=device, generator=gen)
    zy[:, 0] += 1.0

    def step() -> torch.Tensor:
        ix = torch.randint(n, (batch,), device=device, generator=gen)
        iy = torch.randint(n, (batch,), device=device, generator=gen)
        f = net(torch.cat([zx[ix], zy[iy]]))[:, 0]
        obj = f[:batch].mean() - f[batch:].mean()
        opt.zero_grad(set_to_none=True)
        (-obj).backward()
        opt.step()
        return obj

    for _ in range(3):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        obj = step()
    sync(device)
    per_step = (time.perf_counter() - t) / steps
    return {
        "steps_timed": steps,
        "s_per_step": per_step,
        "s_for_2000": 2000 * per_step,
        "objective": float(obj.detach()),
    }


# --------------------------------------------------------------------------- resident pipeline


def resident_estimate(
    x: torch.Tensor,
    y: torch.Tensor,
    config: EstimatorConfig,
    holdout: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """estimate_w1's stages (uniform weights) on data already on the device: the random split and
    the centring and scaling (float64 moments, chunked) run here on the device, since
    lipcore.estimate.prepare reads host arrays; then lipcore's own fit, certify (export, exact
    spectral norms, float64 evaluation of every sample on the device, lower bound, centre,
    gradient norms) and hold_out. The data never leaves the device; what comes back to the host
    is f's float64 values (8 bytes a row) and the split's indices."""
    dev = x.device
    d = x.shape[1]
    chunk = config.eval_chunk
    t0 = time.perf_counter()
    gen = torch.Generator(device=dev).manual_seed(seed)
    parts = []
    for s in (x, y):
        perm = torch.randperm(s.shape[0], device=dev, generator=gen)
        k = int(round(holdout * s.shape[0]))
        parts.append((perm[k:], perm[:k]))
    (tx, hx), (ty, hy) = parts

    def moments(s: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acc = torch.zeros(d, dtype=torch.float64, device=dev)
        acc2 = torch.zeros(d, dtype=torch.float64, device=dev)
        for i in range(0, idx.shape[0], chunk):
            c = s[idx[i : i + chunk]].to(torch.float64)
            acc += c.sum(0)
            acc2 += (c * c).sum(0)
        return acc / idx.shape[0], acc2 / idx.shape[0]

    (m1x, m2x), (m1y, m2y) = moments(x, tx), moments(y, ty)
    mu = 0.5 * (m1x + m1y)
    # E|z - mu|^2 per coordinate from raw moments (the data here is centred near 0: no loss)
    ms = float(0.5 * ((m2x - 2 * mu * m1x + mu * mu) + (m2y - 2 * mu * m1y + mu * mu)).sum()) / d
    scale = 1.0 / math.sqrt(ms) if ms > 1e-300 else 1.0

    def to_z(s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        z = torch.empty(idx.shape[0], d, dtype=torch.float32, device=dev)
        for i in range(0, idx.shape[0], chunk):
            z[i : i + chunk] = ((s[idx[i : i + chunk]].to(torch.float64) - mu) * scale).float()
        return z

    def uniform(k: int) -> torch.Tensor:
        return torch.full((k,), 1.0 / k, device=dev)

    data = TrainingData(
        zx=to_z(x, tx),
        wx=uniform(tx.shape[0]),
        zy=to_z(y, ty),
        wy=uniform(ty.shape[0]),
        shift=mu.cpu().numpy(),
        scale=scale,
    )
    split_x, split_y = (
        Split(t.cpu().numpy(), h.cpu().numpy(), uniform_np(len(t)), uniform_np(len(h)))
        for t, h in ((tx, hx), (ty, hy))
    )
    sync(dev)
    t_prep = time.perf_counter() - t0
    fitted = fit(data, config, seed=seed)
    del data  # the standardised training copies: free them before the certificate
    sync(dev)
    t_train = time.perf_counter() - t0 - t_prep
    t1 = time.perf_counter()
    a, b = uniform_np(x.shape[0]), uniform_np(y.shape[0])
    rng = np.random.default_rng(seed)
    cert = certify(fitted, x, y, a, b, config=config, device=dev, rng=rng)
    held = hold_out(cert, split_x, split_y)
    assert held is not None
    sync(dev)
    t_cert = time.perf_counter() - t1
    return {
        "lower_bound": cert.lower_bound,
        "lipschitz_constant": cert.lipschitz_constant,
        "holdout": held.value,
        "holdout_ci95": list(held.ci95),
        "grad_norm": cert.grad_norm,
        "steps": fitted.result.steps,
        "prep_s": t_prep,
        "train_s": t_train,
        "certify_s": t_cert,
        "total_s": time.perf_counter() - t0,
    }


def uniform_np(k: int) -> np.ndarray:
    """Uniform float64 weights of k samples."""
    return np.full(k, 1.0 / k)


def shifted_gaussians(n: int, d: int, device: torch.device, seed: int) -> tuple[Any, Any]:
    """X ~ N(0, I), Y ~ N(e1, I), n rows each, float32, generated on the device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, device=device, generator=gen)
    y = torch.randn(n, d, device=device, generator=gen)
    y[:, 0] += 1.0
    return x, y


def scale_target(n: int, d: int, config: EstimatorConfig, device: torch.device) -> dict[str, Any]:
    """Targets 2 and 3: data generated on the device, then the resident pipeline; the time counts
    the data generation too. Peak device memory on CUDA."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    x, y = shifted_gaussians(n, d, device, seed=1)
    sync(device)
    gen_s = time.perf_counter() - t
    r = resident_estimate(x, y, config)
    r["generate_s"] = gen_s
    r["end_to_end_s"] = time.perf_counter() - t
    r["lower_rel_err"] = abs(r["lower_bound"] - 1.0)
    r["holdout_rel_err"] = abs(r["holdout"] - 1.0)
    r["peak_gib"] = (
        torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    )
    del x, y
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r


# --------------------------------------------------------------------------- correctness


def correctness(device: torch.device, n: int) -> dict[str, Any]:
    """(1) soundness on a small case on the device: lower_bound <= exact_w1; (2) device vs CPU on a
    full-batch case (n <= batch: no sampling, the initial weights come from the CPU generator, so
    both follow the same trajectory up to rounding); (3) the resident pipeline's float64
    evaluation of device-resident rows against the host one (lipcore.evaluate both)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 5))
    y = rng.normal(size=(n, 5)) * 1.3 + 0.5
    cfg = bench_config(width=32, depth=2, steps=150, batch_size=1024, progress_every=50)
    exact = exact_w1(x, y)
    out: dict[str, Any] = {"exact": exact}
    with _no_tf32():
        dev_est = estimate_w1(x, y, config=cfg, device=device, seed=0)
        cpu_est = estimate_w1(x, y, config=cfg, device="cpu", seed=0)
    out["lower_device"] = dev_est.lower_bound
    out["lower_cpu"] = cpu_est.lower_bound
    out["sound"] = bool(dev_est.lower_bound <= exact + 1e-9 and cpu_est.lower_bound <= exact + 1e-9)
    out["device_vs_cpu_abs"] = abs(dev_est.lower_bound - cpu_est.lower_bound)
    out["device_equals_cpu"] = bool(out["device_vs_cpu_abs"] <= 1e-3 * exact)
    for name in ("bf16", "tf32"):
        e = estimate_w1(x, y, config=dataclasses.replace(cfg, precision=name), device=device)
        out[f"lower_{name}"] = e.lower_bound
        out[f"sound_{name}"] = bool(e.lower_bound <= exact + 1e-9)
    # float64 evaluation of device-resident rows vs the host path, on the same exported model
    model = dev_est.potential
    xt = torch.from_numpy(x).to(device, torch.float32)
    f_res = evaluate(model, xt, chunk=37, device=device)
    f_host = evaluate(model, x.astype(np.float32), chunk=len(x), device="cpu")
    out["resident_eval_max_abs"] = float(np.abs(f_res - f_host).max())
    out["envelope"] = envelope_check(device)
    out["ok"] = bool(
        out["sound"]
        and out["device_equals_cpu"]
        and out["sound_bf16"]
        and out["sound_tf32"]
        and out["resident_eval_max_abs"] < 1e-9
        and out["envelope"]["ok"]
    )
    return out


def envelope_check(
    device: torch.device, m: int = 3000, n: int = 5000, d: int = 16
) -> dict[str, Any]:
    """An envelope (lipcore.envelope) on ``device`` against the same one on the CPU: values and
    gradients (float64, so equal up to rounding), the prefix pass of the choice, and the seconds
    of one evaluation of n rows over m anchors."""
    rng = np.random.default_rng(11)
    anchors, values = rng.normal(size=(m, d)), rng.normal(size=m)
    x = rng.normal(size=(n, d))
    cpu = torch.nn.Sequential(envelope_of(anchors, values, "source"))
    env = envelope_of(anchors, values, "source").to(device)
    dev = torch.nn.Sequential(env)
    f_cpu, g_cpu = evaluate(cpu, x, chunk=n, grad=True)
    sync(device)
    t = time.perf_counter()
    f_dev, g_dev = evaluate(dev, x, chunk=n, device=device, grad=True)
    sync(device)
    seconds = time.perf_counter() - t
    prefix = env.prefix_values(torch.from_numpy(x).to(device), [m]).cpu().numpy()[0]
    out = {
        "values_max_abs": float(np.abs(f_dev - f_cpu).max()),
        "grads_max_abs": float(np.abs(g_dev - g_cpu).max()),
        "prefix_max_abs": float(np.abs(prefix - f_cpu).max()),
        "eval_s": seconds,
    }
    out["ok"] = bool(
        max(out["values_max_abs"], out["prefix_max_abs"]) < 1e-9 and out["grads_max_abs"] < 1e-6
    )
    return out


class _no_tf32:
    """float32 matrix products stay float32 (the CPU comparison must not see TF32 rounding)."""

    def __enter__(self) -> None:
        self.old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self.old


# --------------------------------------------------------------------------- service


def service_target(n: int, d: int, config: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Target 4: `lipwass serve` as a subprocess on this device; both sets uploaded (.npy stream),
    one job, followed over SSE to the result. Training time: the last progress event's
    elapsed_s (a lower bound of it), so 'not training' is an upper bound of the overhead."""
    from bench.service import start_server
    from service.client import Client

    os.environ["LIPWASS_DEVICE"] = device.type
    os.environ.setdefault("LIPWASS_PROGRESS_INTERVAL_S", "0.2")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = rng.standard_normal((n, d), dtype=np.float32)
    y[:, 0] += 1.0
    with tempfile.TemporaryDirectory(prefix="lipwass-gpu-") as tmp:
        proc, url = start_server(Path(tmp) / "data", Path(tmp) / "server.log")
        try:
            elapsed: list[float] = []
            with Client(url, timeout=600) as c:
                t = time.perf_counter()
                sx = c.upload(x)["id"]
                sy = c.upload(y)["id"]
                t_up = time.perf_counter() - t
                est = c.estimate(
                    sx,
                    sy,
                    method="lipschitz",
                    crosscheck="never",
                    seed=0,
                    config=config,
                    timeout=600,
                    on_progress=lambda p: elapsed.append(float(p["elapsed_s"])),
                )
                total = time.perf_counter() - t
        finally:
            proc.terminate()
            proc.wait(30)
    train_s = max(elapsed) if elapsed else math.nan
    return {
        "n": n,
        "d": d,
        "upload_s": t_up,
        "end_to_end_s": total,
        "job_estimate_s": est["result"].get("seconds"),
        "train_s_at_least": train_s,
        "not_training_share_at_most": 1 - train_s / total if elapsed else None,
        "lower_bound": est["result"]["lower_bound"],
        "device": est["result"].get("device"),
    }


# --------------------------------------------------------------------------- main


def cpu_name() -> str:
    """The CPU model and the cores this process may use (the card name on a CPU run)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({len(os.sched_getaffinity(0))} cores)"
    except OSError:
        pass
    return platform.machine()


def sync_count(device: torch.device) -> dict[str, Any]:
    """Host syncs during 60 training steps (progress every 30), counted by CUDA's sync debug
    mode: the loop should sync only at the two objective read-backs and once per sampler when it
    is set up (is the weight vector uniform?): 4, whatever the number of steps."""
    if device.type != "cuda":
        return {"skipped": "CUDA only"}
    import warnings

    cfg = bench_config(width=64, depth=2, steps=60, batch_size=256, progress_every=30)
    x = torch.randn(4096, 8, device=device)
    w = torch.full((4096,), 1 / 4096, device=device)
    net = LipschitzMLP(8, cfg, torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    train(net, x, w, x + 1, w, cfg, gen)  # warm-up (allocations, cuBLAS handles)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(net, x, w, x + 1, w, cfg, gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(c.message)[:200] for c in caught if "synchroniz" in str(c.message)]
    return {"steps": 60, "expected": 4, "syncs": len(syncs), "first": syncs[:6]}


def run_section(results: dict[str, Any], name: str, fn: Callable[[], Any], deadline: float) -> None:
    """Runs one section, recording its result, its error (traceback) or that it was skipped for
    lack of time; a failure in one section does not stop the others."""
    if time.monotonic() > deadline:
        results[name] = {"skipped": "time budget spent"}
        print(f"[{name}] skipped: time budget spent", flush=True)
        return
    t = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - report and go on with the next section
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
    print(
        f"[{name}] {time.perf_counter() - t:.1f} s: {json.dumps(results[name], default=str)[:600]}",
        flush=True,
    )


def lever_configs(t1: dict[str, int], device: torch.device) -> dict[str, EstimatorConfig]:
    """Target 1's configuration with each lever on, one at a time, then the best combination."""
    arch = {
        "width": t1["width"],
        "depth": t1["depth"],
        "batch_size": t1["batch"],
        "steps": t1["steps"],
    }
    base = bench_config(**arch)
    levers = {
        "float32": base,
        "ortho_iters=2": dataclasses.replace(base, ortho_iters=2),
        "tf32": dataclasses.replace(base, precision="tf32"),
        "bf16": dataclasses.replace(base, precision="bf16"),
        "compile": dataclasses.replace(base, compile=True),
        "compile+tf32": dataclasses.replace(base, compile=True, precision="tf32"),
        "compile+bf16": dataclasses.replace(base, compile=True, precision="bf16"),
        "cuda_graphs+bf16": dataclasses.replace(base, cuda_graphs=True, precision="bf16"),
    }
    return levers


def table(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The markdown table for bench/RESULTS.md."""

    def g(path: str, fmt: str = "{:.3g}") -> str:
        cur: Any = results
        for part in path.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return "—"
            cur = cur[part]
        if isinstance(cur, float) and "e" in fmt.format(cur) and fmt == "{:.3g}":
            return f"{cur:.2e}"
        if isinstance(cur, float):
            return fmt.format(cur)
        return str(cur)

    lines = [
        f"Card: {meta['card']}; {meta['date']}; `{meta['command']}`; torch {meta['torch']}.",
        "",
        "| figure | value | target |",
        "| --- | --- | --- |",
        f"| correctness: sound (fp32 / bf16 / tf32), device = CPU path | {g('correctness.sound')}"
        f" / {g('correctness.sound_bf16')} / {g('correctness.sound_tf32')},"
        f" {g('correctness.device_equals_cpu')}"
        f" (|Δ| {g('correctness.device_vs_cpu_abs')}) | all True |",
        "| host syncs in 60 training steps (2 read-backs, 2 sampler set-ups) |"
        f" {g('syncs.syncs')} | 4 |",
        f"| matrix rate measured: bf16 / tf32 / fp32 TFLOP/s | {g('rates.bf16')} /"
        f" {g('rates.tf32')} / {g('rates.fp32')} | |",
    ]
    t1 = {**results.get("t1", {}), **results.get("t1_compiled", {})}
    for name, r in t1.items():
        if isinstance(r, dict) and "wall_s" in r:
            lines.append(
                f"| target 1, {name}: wall (compile incl.) / steady for all steps / steps/s /"
                f" TFLOP/s | {r['wall_s']:.2f} s / {r['steady_s_for_all_steps']:.2f} s /"
                f" {r['steps_per_s']:.0f} / {r['tflops']:.3g} | ≤ 3 s |"
            )
        else:
            lines.append(f"| target 1, {name} | {json.dumps(r, default=str)[:120]} | ≤ 3 s |")
    lines += [
        f"| deel-torchlip, same step, extrapolated to 2000 steps | {g('deel.s_for_2000')} s"
        f" ({g('deel.steps_timed')} steps timed) | 45 s on an H200 |",
        "| target 2 (10⁶ × 64): lower bound / holdout / end to end |"
        f" {g('t2.lower_bound', '{:.4f}')}"
        f" / {g('t2.holdout', '{:.4f}')} / {g('t2.end_to_end_s', '{:.2f}')} s"
        f" (train {g('t2.train_s', '{:.2f}')} s, certify {g('t2.certify_s', '{:.2f}')} s) |"
        " within 1 % of 1, ≤ 10 s |",
        f"| target 2 via estimate_w1 on host arrays: lower bound / seconds |"
        f" {g('t2_host.lower_bound', '{:.4f}')} / {g('t2_host.seconds', '{:.2f}')} s | |",
        f"| target 3 (10⁷ × 128): lower bound / holdout / end to end / peak GiB |"
        f" {g('t3.lower_bound', '{:.4f}')} / {g('t3.holdout', '{:.4f}')} /"
        f" {g('t3.end_to_end_s', '{:.2f}')} s / {g('t3.peak_gib', '{:.1f}')} |"
        " within 1 %, ≤ 60 s |",
        f"| target 4 (service, 10⁶ × 64): upload / end to end / not-training share (at most) |"
        f" {g('t4.upload_s', '{:.2f}')} s / {g('t4.end_to_end_s', '{:.2f}')} s /"
        f" {g('t4.not_training_share_at_most', '{:.2f}')} | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, every code path (CPU ok)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu.json")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip sections after this")
    p.add_argument("--skip", default="", help="comma-separated sections to skip")
    p.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    p.add_argument("--rounds", type=int, default=1, help="target 1: interleaved repeats")
    p.add_argument("--t1", default="", help="target 1's size as d,width,depth,batch,steps")
    p.add_argument("--levers", default="", help="comma-separated lever names (default: all)")
    p.add_argument("--precision", default="tf32", help="training precision of targets 2-4")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    device = torch.device(args.device) if args.device else default_device()
    skip = {s for s in args.skip.split(",") if s}
    deadline = time.monotonic() + args.budget_s
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    meta = {
        "card": card or platform.machine(),
        "device": str(device),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__,
        "smoke": args.smoke,
    }
    print(json.dumps(meta), flush=True)
    results: dict[str, Any] = {"meta": meta}
    sections: dict[str, Callable[[], Any]] = {}
    sections["correctness"] = lambda: correctness(device, sizes["small_n"])

    def rates() -> dict[str, float]:
        m = sizes["matmul"]
        r = {"fp32": matmul_rate(device, torch.float32, m)}
        r["bf16"] = matmul_rate(device, torch.bfloat16, m)
        r["tf32"] = (
            matmul_rate(device, torch.float32, m, tf32=True) if device.type == "cuda" else r["fp32"]
        )
        return r

    sections["rates"] = rates
    t1 = dict(sizes["t1"])
    if args.t1:
        t1 = dict(
            zip(
                ["d", "width", "depth", "batch", "steps"], map(int, args.t1.split(",")), strict=True
            )
        )
        meta["t1"] = t1

    def target1(compiled: bool) -> dict[str, Any]:
        """Each lever in turn, ``--rounds`` times interleaved (a shared machine's load changes
        slow every lever alike); per lever the round with the median steady rate."""
        runs: dict[str, list[dict[str, Any]]] = {}
        wanted = {s for s in args.levers.split(",") if s}
        levers = {
            name: cfg
            for name, cfg in lever_configs(t1, device).items()
            if not (wanted and name not in wanted) and (cfg.compile or cfg.cuda_graphs) == compiled
        }
        for _ in range(args.rounds):
            for name, cfg in levers.items():
                if time.monotonic() > deadline:
                    runs.setdefault(name, []).append({"skipped": "time budget spent"})
                    continue
                try:
                    r = time_training(cfg, t1["d"], device)
                except Exception as exc:  # noqa: BLE001
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                runs.setdefault(name, []).append(r)
                print(f"  t1 {name}: {json.dumps(r, default=str)[:300]}", flush=True)
        out: dict[str, Any] = {}
        for name, rs in runs.items():
            ok = sorted((r for r in rs if "steps_per_s" in r), key=lambda r: r["steps_per_s"])
            out[name] = dict(ok[len(ok) // 2]) if ok else rs[0]
            if ok:
                out[name]["all_steps_per_s"] = [round(r["steps_per_s"], 3) for r in ok]
        return out

    sections["syncs"] = lambda: sync_count(device)
    sections["t1"] = lambda: target1(False)
    sections["deel"] = lambda: (
        time_deel(t1["d"], t1["width"], t1["depth"], t1["batch"], sizes["deel_steps"], device)
        or {"skipped": "deel-torchlip not importable"}
    )

    def best_config(t: dict[str, int]) -> EstimatorConfig:
        prec = args.precision if device.type == "cuda" else "float32"
        return bench_config(
            width=256 if not args.smoke else 32,
            depth=4 if not args.smoke else 2,
            batch_size=t["batch"],
            steps=t["steps"],
            precision=prec,
            eval_chunk=1 << 20,
        )

    sections["t2"] = lambda: scale_target(
        sizes["t2"]["n"], sizes["t2"]["d"], best_config(sizes["t2"]), device
    )

    def t2_host() -> dict[str, Any]:
        t = sizes["t2"]
        rng = np.random.default_rng(1)
        x = rng.standard_normal((t["n"], t["d"]), dtype=np.float32)
        y = rng.standard_normal((t["n"], t["d"]), dtype=np.float32)
        y[:, 0] += 1.0
        e = estimate_w1(x, y, config=best_config(t), device=device)
        return {
            "lower_bound": e.lower_bound,
            "seconds": e.seconds,
            "holdout": e.holdout.value if e.holdout else None,
        }

    sections["t2_host"] = t2_host
    sections["t3"] = lambda: scale_target(
        sizes["t3"]["n"], sizes["t3"]["d"], best_config(sizes["t3"]), device
    )

    def t4() -> dict[str, Any]:
        t = sizes["t4"]
        cfg = best_config(t).to_dict()
        return service_target(t["n"], t["d"], cfg, device)

    sections["t4"] = t4
    sections["t1_compiled"] = lambda: target1(True)  # last: compilation takes long
    only = {s for s in args.only.split(",") if s}
    for name, fn in sections.items():
        if name in skip or (only and name not in only):
            results[name] = {"skipped": "--skip"}
            continue
        run_section(results, name, fn, deadline)

    md = table(results, meta)
    print("\n" + md, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu.json").write_text(json.dumps(results, indent=1, default=str))
        (Path(args.out) / "gpu.md").write_text(md + "\n")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    if isinstance(results.get("correctness"), dict) and results["correctness"].get("ok") is False:
        failed.append("correctness (a check failed)")
    if failed:
        print(f"FAILED sections: {failed}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

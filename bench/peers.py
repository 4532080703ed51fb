"""lipcore against its peers on the same problem, side by side in one process, on this machine.

- POT ``ot.emd2`` (exact, Euclidean cost, large numItermax): the reference value and its time.
- GeomLoss ``SamplesLoss("sinkhorn", p=1, blur=..., scaling=0.9)``: entropic approximation.
- deel-torchlip 1.0.5 (SpectralLinear + GroupSort2 + FrobeniusLinear: power iteration and Björck to
  convergence at every step) against lipcore's network and training step (one Björck iteration
  from a warm start, the fused forward and backward of lipcore.fused), same architecture, batch,
  steps, optimiser (Adam, fused kernel), learning-rate schedule, data and input scaling. The
  two are trained in lockstep (one step of each in turn, each step timed) so that a machine whose
  load changes during the run slows both alike. Both are certified the same way afterwards
  (exact float64 spectral norms of the exported weights, every sample in float64).

deel-torchlip and GeomLoss are benchmark-only peers, not lipwass dependencies; a peer that is not
installed is skipped. To install them:
    .venv/bin/python -m pip install deel-torchlip==1.0.5 geomloss

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.peers
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.peers --width 256 --depth 4 --batch 4096 --steps 20
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from torch import nn

from lipcore import EstimatorConfig, evaluate, exact_w1
from lipcore.certify import lipschitz_constant, weighted_difference
from lipcore.estimate import _scaling
from lipcore.network import LipschitzMLP
from lipcore.train import make_objective, make_optimizer, train_step


def problem(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "shift2d":  # the deel-torchlip reference case: a 2-D Gaussian shift
        return rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)) + [2.0, 0.0]
    if name == "mixture2d":
        c = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
        x = c[rng.integers(0, 3, 2500)] + 0.7 * rng.normal(size=(2500, 2))
        return x, 1.5 * rng.normal(size=(3000, 2))
    raise ValueError(name)


def deel_network(d: int, width: int, depth: int) -> nn.Module | None:
    try:
        from deel import torchlip as tl
    except ImportError:
        return None
    layers: list[nn.Module] = [tl.SpectralLinear(d, width), tl.GroupSort2()]
    for _ in range(depth - 1):
        layers += [tl.SpectralLinear(width, width), tl.GroupSort2()]
    layers.append(tl.FrobeniusLinear(width, 1))
    return tl.Sequential(*layers)


def deel_export(net: nn.Module) -> nn.Sequential:
    from deel.torchlip import vanilla_model

    net.eval()
    return vanilla_model(net).double()


def certified_bound(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(lower bound, L) for a plain Sequential taking scaled inputs, in the units of x and y."""
    lip = lipschitz_constant(model)
    fx, fy = evaluate(model, x, chunk=65536), evaluate(model, y, chunk=65536)
    u = np.full(len(x), 1 / len(x))
    v = np.full(len(y), 1 / len(y))
    return weighted_difference(fx, u, fy, v) / lip, lip


def sinkhorn(x: np.ndarray, y: np.ndarray, blur: float) -> tuple[float, float] | None:
    try:
        from geomloss import SamplesLoss
    except ImportError:
        return None
    loss = SamplesLoss("sinkhorn", p=1, blur=blur, scaling=0.9, backend="tensorized")
    t = time.perf_counter()
    v = float(loss(torch.from_numpy(x), torch.from_numpy(y)))
    return v, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="shift2d", choices=["shift2d", "mixture2d"])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=EstimatorConfig().lr)
    p.add_argument("--ortho-iters", type=int, default=EstimatorConfig().ortho_iters)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-exact", action="store_true", help="skip POT and GeomLoss")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = problem(args.problem, args.seed)
    n, d = x.shape
    print(
        f"problem {args.problem}: n={n} m={len(y)} d={d}; width {args.width}, depth {args.depth},"
        f" batch {args.batch}, steps {args.steps}, torch threads {torch.get_num_threads()}"
    )

    rows: list[tuple[str, str, str, str]] = []
    exact = math.nan
    if not args.no_exact:
        t = time.perf_counter()
        exact = exact_w1(x, y)
        rows.append(("POT ot.emd2 (exact)", f"{exact:.5f}", "0", f"{time.perf_counter() - t:.1f}"))
        for blur in (0.05, 0.01):
            r = sinkhorn(x, y, blur)
            if r is None:
                rows.append((f"GeomLoss sinkhorn p=1 blur={blur}", "not installed", "", ""))
            else:
                gap = f"{100 * (exact - r[0]) / exact:+.2f}"
                rows.append(
                    (f"GeomLoss sinkhorn p=1 blur={blur}", f"{r[0]:.5f}", gap, f"{r[1]:.1f}")
                )

    u = np.full(n, 1 / n)
    v = np.full(len(y), 1 / len(y))
    mu, scale = _scaling(x, u, y, v, 65536)
    zx = torch.from_numpy(((x - mu) * scale).astype(np.float32))
    zy = torch.from_numpy(((y - mu) * scale).astype(np.float32))
    xs, ys = (x - mu) * scale, (y - mu) * scale  # certified in scaled space, reported / scale

    config = EstimatorConfig(
        width=args.width, depth=args.depth, ortho_iters=args.ortho_iters, lr=args.lr
    )
    torch.manual_seed(args.seed)
    nets: dict[str, nn.Module] = {"lipcore": LipschitzMLP(d, config, torch.Generator())}
    deel = deel_network(d, args.width, args.depth)
    if deel is None:
        rows.append(("deel-torchlip 1.0.5", "not installed", "", ""))
    else:
        nets["deel-torchlip"] = deel
    # lipcore's own training step (lipcore.train: fused forward and backward, fused Adam); the
    # peer gets the same Adam (fused kernel) and the same plain objective.
    lip = nets["lipcore"]
    objective = make_objective(lip, config, torch.device("cpu"))
    opts = {k: make_optimizer(m, config) for k, m in nets.items()}
    s = torch.cat(
        [torch.full((args.batch,), 1 / args.batch), torch.full((args.batch,), -1 / args.batch)]
    )
    times: dict[str, list[float]] = {k: [] for k in nets}
    gen = torch.Generator().manual_seed(args.seed)
    lr_min = args.lr * config.lr_final
    for step in range(1, args.steps + 1):
        ix = torch.randint(len(zx), (args.batch,), generator=gen)
        iy = torch.randint(len(zy), (args.batch,), generator=gen)
        batch = torch.cat([zx[ix], zy[iy]])
        lr = lr_min + 0.5 * (args.lr - lr_min) * (1 + math.cos(math.pi * step / args.steps))
        for name, net in nets.items():
            opt = opts[name]
            t = time.perf_counter()
            if net is lip:
                train_step(lip, opt, objective, batch, s)
            else:
                loss = -torch.dot(s, net(batch)[:, 0])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            times[name].append(time.perf_counter() - t)
            for g in opt.param_groups:
                g["lr"] = lr

    per_step: dict[str, float] = {}
    for name, net in nets.items():
        exported = net.export() if isinstance(net, LipschitzMLP) else deel_export(net)
        lb, lip = certified_bound(exported, xs, ys)
        lb /= scale
        med = statistics.median(times[name])
        per_step[name] = med
        gap = f"{100 * (exact - lb) / exact:+.2f}" if math.isfinite(exact) else ""
        label = f"{name} ({args.steps} steps, L={lip:.4f})"
        rows.append((label, f"{lb:.5f}", gap, f"{sum(times[name]):.1f}"))

    print(f"\n| {'method':52s} | {'W1 / bound':>13s} | {'gap %':>6s} | {'seconds':>7s} |")
    print(f"|{'-' * 54}|{'-' * 15}|{'-' * 8}|{'-' * 9}|")
    for r in rows:
        print(f"| {r[0]:52s} | {r[1]:>13s} | {r[2]:>6s} | {r[3]:>7s} |")
    print()
    for name, med in per_step.items():
        print(f"{name:14s} median step {1000 * med:8.2f} ms")
    if "deel-torchlip" in per_step:
        ratio = per_step["deel-torchlip"] / per_step["lipcore"]
        print(f"speed-up per training step (median, lockstep): {ratio:.2f}x")


if __name__ == "__main__":
    main()

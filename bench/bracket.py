"""Width and time of the certified bracket [lower_bound, upper_bound] of the empirical W1.

For each case and n: estimate_w1 (default config unless --config), then lipcore.upper_bound with
the potential's values (block / passes / window as given), and exact_w1 where it still runs
(d <= 3, n <= --exact-max). Prints one markdown row per run: lower, upper, exact, the bracket
width (upper - lower) / upper, how far upper is above exact, and the times.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bracket --n 10000 --cases shift2 scale2 ring3
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bracket --n 1000000 --cases shift2 ring3
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bracket --n 10000 --cases shift16 shift64
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch

from lipcore import EstimatorConfig, exact_w1, upper_bound
from lipcore.bracket import bracket_width
from lipcore.estimate import certify, fit, prepare

Pair = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


def _shift(d: int, size: float) -> Callable[[np.random.Generator, int], Pair]:
    def make(rng: np.random.Generator, n: int) -> Pair:
        x = rng.normal(size=(n, d))
        y = rng.normal(size=(n, d)) + size / np.sqrt(d)
        return x, y, None, None

    return make


def _scale2(rng: np.random.Generator, n: int) -> Pair:
    x = rng.normal(size=(n, 2))
    y = 2.5 * rng.normal(size=(n, 2)) + [1.0, 1.0]
    return x, y, None, None


def _mixture2(rng: np.random.Generator, n: int) -> Pair:
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    x = centres[rng.integers(0, 3, size=n)] + 0.7 * rng.normal(size=(n, 2))
    y = 1.5 * rng.normal(size=(n, 2))
    a = rng.gamma(2.0, size=n)
    return x, y, a / a.sum(), None


def _ring3(rng: np.random.Generator, n: int) -> Pair:
    t = rng.uniform(0, 2 * np.pi, size=n)
    x = np.c_[5 * np.cos(t), 5 * np.sin(t), 0.3 * rng.normal(size=n)]
    y = rng.normal(size=(n, 3))
    return x, y, None, None


def _aniso3(rng: np.random.Generator, n: int) -> Pair:
    x = rng.normal(size=(n, 3))
    y = rng.normal(size=(n, 3)) * [1.0, 2.0, 0.5] + [3.0, 0.0, 0.0]
    a, b = rng.gamma(2.0, size=n), rng.gamma(2.0, size=n)
    return x, y, a / a.sum(), b / b.sum()


CASES: dict[str, tuple[str, Callable[[np.random.Generator, int], Pair]]] = {
    "shift2": ("gauss shift 2 (d=2)", _shift(2, 2.0)),
    "scale2": ("gauss vs wide gauss (d=2)", _scale2),
    "mixture2": ("mixture vs gauss, weighted (d=2)", _mixture2),
    "ring3": ("ring vs gauss (d=3)", _ring3),
    "aniso3": ("anisotropic shift, weighted (d=3)", _aniso3),
    "shift16": ("gauss shift 4 (d=16)", _shift(16, 4.0)),
    "shift64": ("gauss shift 8 (d=64)", _shift(64, 8.0)),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[10_000], help="samples per set")
    p.add_argument("--cases", nargs="+", default=["shift2", "scale2", "mixture2", "ring3"])
    p.add_argument("--config", default="{}", help="JSON overrides of EstimatorConfig")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--window", type=int, default=0)
    p.add_argument("--budget", type=float, default=None, help="max_seconds = budget x fit time")
    p.add_argument("--exact-max", type=int, default=10_000, help="largest n for exact_w1")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    config = EstimatorConfig.from_dict(json.loads(args.config))
    print(
        f"block {args.block}, passes {args.passes}, window {args.window}, "
        f"budget {args.budget}; config overrides {json.loads(args.config) or 'none'}"
    )
    print(
        "| case | n | lower | upper | exact | width % | upper over exact % "
        "| estimate s | upper s | exact s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.n:
        for key in args.cases:
            label, make = CASES[key]
            x, y, a, b = make(np.random.default_rng(args.seed), n)
            t0 = time.perf_counter()
            prep = prepare(x, y, a, b, config=config, seed=args.seed)
            fitted = fit(prep.data, prep.config, seed=prep.seed)
            cert = certify(
                fitted, prep.x, prep.y, prep.a, prep.b,
                config=prep.config, device=prep.device, rng=prep.rng,
            )  # fmt: skip
            t_est = time.perf_counter() - t0
            budget = None if args.budget is None else args.budget * t_est
            ub = upper_bound(
                x, y, a, b, fx=cert.fx, fy=cert.fy, block=args.block, passes=args.passes,
                window=args.window, max_seconds=budget,
            )  # fmt: skip
            exact, t_exact = float("nan"), float("nan")
            if n <= args.exact_max and x.shape[1] <= 3:
                t1 = time.perf_counter()
                exact = exact_w1(x, y, a, b, max_pairs=n * n)
                t_exact = time.perf_counter() - t1
                assert cert.lower_bound <= exact * (1 + 1e-12) and exact <= ub.value
            width = 100 * bracket_width(cert.lower_bound, ub.value)
            over = 100 * (ub.value - exact) / exact
            print(
                f"| {label} | {n} | {cert.lower_bound:.5g} | {ub.value:.5g} | {exact:.5g} "
                f"| {width:.2f} | {over:.2f} | {t_est:.1f} | {ub.seconds:.1f} | {t_exact:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

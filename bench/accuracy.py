"""Accuracy of lipcore.estimate_w1 against the exact empirical W1 (POT / 1-D closed form).

Relative gap (exact - lower_bound) / exact over the low-dimensional cases of bench/cases.py, with
the default EstimatorConfig unless --config overrides some knobs. Prints a table and a summary.

    OMP_NUM_THREADS=2 .venv/bin/python -m bench.accuracy              # default config, all cases
    OMP_NUM_THREADS=2 .venv/bin/python -m bench.accuracy --config '{"steps": 500}' --cases 0 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.cases import make_cases
from lipcore import EstimatorConfig, estimate_w1, exact_w1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="{}", help="JSON overrides of EstimatorConfig")
    p.add_argument("--cases", type=int, nargs="*", help="case indices (default: all)")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--fit-seed", type=int, default=0, help="estimate_w1 seed")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = EstimatorConfig.from_dict(json.loads(args.config))
    overrides = {k: v for k, v in config.to_dict().items() if v != getattr(EstimatorConfig(), k)}
    print(f"config overrides: {overrides or 'none (defaults)'}; holdout {args.holdout}")
    header = f"| {'case':46s} | {'exact':>10s} | {'lower_bound':>11s} | {'gap %':>6s} |"
    header += f" {'holdout (ci95)':>26s} | {'steps':>5s} | {'fit s':>6s} | {'exact s':>7s} |"
    header += f" {'potential':>22s} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    gaps = []
    for name, x, y, a, b in make_cases(args.seed, args.cases):
        t0 = time.perf_counter()
        exact = exact_w1(x, y, a, b)
        t_exact = time.perf_counter() - t0
        est = estimate_w1(x, y, a, b, config=config, holdout=args.holdout, seed=args.fit_seed)
        gap = (exact - est.lower_bound) / exact
        gaps.append(gap)
        h = est.holdout
        hs = "-" if h is None else f"{h.value:.4g} ({h.ci95[0]:.4g}, {h.ci95[1]:.4g})"
        kept = "network" if est.envelope is None else est.envelope.kept
        print(
            f"| {name:46s} | {exact:10.5g} | {est.lower_bound:11.5g} | {100 * gap:6.2f} |"
            f" {hs:>26s} | {est.steps:5d} | {est.seconds:6.1f} | {t_exact:7.1f} |"
            f" {kept:>22s} |",
            flush=True,
        )
    print(
        f"\nrelative gap over {len(gaps)} cases: median {100 * statistics.median(gaps):.2f} %,"
        f" worst {100 * max(gaps):.2f} %, min {100 * min(gaps):.2f} %"
    )
    if min(gaps) < -1e-9:
        raise SystemExit("UNSOUND: a lower bound exceeded the exact value")


if __name__ == "__main__":
    main()

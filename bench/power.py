"""Two-sample test: size and power of lipcore's verdict against the energy and MMD tests.

lipcore's test (``estimate_w1(...).test``): the potential is trained on the training split, then a
permutation test of its mean difference on the held-out samples. Its peers, run on the same data
(all samples, both sets), at the same alpha and with the same number of permutations:

- ``energy``: the energy-distance test (V-statistic, Euclidean distance), permutation p-value:
  ``dcor.homogeneity.energy_test`` computes the same statistic and null; here it is computed from
  one pooled distance matrix, B relabellings at a time as matrix products (20-50x faster than dcor's
  loop, and weighted: weights travel with their samples, as in lipcore's test). ``crosscheck``
  compares both statistics and p-values with dcor's.
- ``mmd``: the Gaussian-kernel MMD (V-statistic) with the median-heuristic bandwidth
  (gamma = 1 / (2 median^2), median of the pooled pairwise distances: hyppo's own rule), permutation
  p-value, computed the same way. hyppo's ``MMD().test(reps=500, auto=False)`` takes 30-80 s per
  test at n = 500 on this machine (its permutations run through an independence test), too slow for
  hundreds of replications; ``crosscheck`` compares the p-values with hyppo's on a few data sets.

Parts: ``panel`` (size and power: rejection rates at alpha over replications), ``overhead`` (the
time the verdict adds to an estimate at n = 10^5), ``heldout20`` (the held-out distance on two
5000 x 20 samples, one feature shifted by 0.5, true W1 = 0.5), ``crosscheck`` (own peers against
dcor and hyppo). Peers are benchmark-only dependencies: ``pip install -e '.[bench]'``.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.power --quick  # smoke check, under a minute
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.power --parts panel --jobs 2
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.power --parts panel --cases shift-d2 --reps 100 \
        --n 200 --holdouts 0.2 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]

# --------------------------------------------------------------------------- the panel


def _gamma_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.gamma(2.0, size=n)  # moderately uneven, all positive, independent of the samples
    return w / w.sum()


def _shift(d: int, delta: float, dense: bool) -> Callable[[np.random.Generator, int], Arrays]:
    """N(0, I_d) vs N(mu, I_d), |mu| = delta: spread over all coordinates, or on the first."""
    mu = np.full(d, delta / math.sqrt(d)) if dense else delta * np.eye(d)[0]

    def make(rng: np.random.Generator, n: int) -> Arrays:
        return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + mu, None, None

    return make


def _null(d: int, weighted: bool = False) -> Callable[[np.random.Generator, int], Arrays]:
    def make(rng: np.random.Generator, n: int) -> Arrays:
        x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
        if not weighted:
            return x, y, None, None
        return x, y, _gamma_weights(rng, n), _gamma_weights(rng, n)

    return make


def _importance_null(rng: np.random.Generator, n: int) -> Arrays:
    """One distribution, two samplings: x ~ N(0, I_2) with equal weights; y ~ N(0.5 e1, I_2)
    weighted by the density ratio, so that (y, b) is N(0, I_2) too. The pairs (sample, weight) of
    the two sets are not exchangeable: no permutation test is exact here; this measures how far
    each one's size moves."""
    x = rng.normal(size=(n, 2))
    y = rng.normal(size=(n, 2)) + [0.5, 0.0]
    b = np.exp(-0.5 * y[:, 0] + 0.125)
    return x, y, None, b / b.sum()


def _scale(d: int, sigma: float, first_only: bool) -> Callable[[np.random.Generator, int], Arrays]:
    s = np.where(np.arange(d) == 0, sigma, 1.0) if first_only else np.full(d, sigma)

    def make(rng: np.random.Generator, n: int) -> Arrays:
        return rng.normal(size=(n, d)), rng.normal(size=(n, d)) * s, None, None

    return make


def _mixture(d: int, m: float) -> Callable[[np.random.Generator, int], Arrays]:
    """First coordinate: 0.5 N(-m, 1 - m^2) + 0.5 N(m, 1 - m^2) (mean 0, variance 1) against
    N(0, 1); the other d - 1 coordinates N(0, 1) in both. Equal mean and covariance."""
    sd = math.sqrt(1.0 - m * m)

    def make(rng: np.random.Generator, n: int) -> Arrays:
        x = rng.normal(size=(n, d))
        x[:, 0] = np.where(rng.random(n) < 0.5, -m, m) + sd * rng.normal(size=n)
        return x, rng.normal(size=(n, d)), None, None

    return make


def _weighted_shift(d: int, delta: float) -> Callable[[np.random.Generator, int], Arrays]:
    base = _shift(d, delta, dense=False)

    def make(rng: np.random.Generator, n: int) -> Arrays:
        x, y, _, _ = base(rng, n)
        return x, y, _gamma_weights(rng, n), _gamma_weights(rng, n)

    return make


@dataclass(frozen=True)
class Case:
    name: str
    null: bool
    d: int
    n: int  # per set, unless --n says otherwise
    make: Callable[[np.random.Generator, int], Arrays]
    what: str
    reps: int  # replications unless --reps says otherwise
    peers: bool = True  # False: n too large for the O(n^2) peers


PANEL: list[Case] = [
    Case("null-d2", True, 2, 500, _null(2), "N(0,I) vs N(0,I), d=2", 200),
    Case("null-d50", True, 50, 500, _null(50), "N(0,I) vs N(0,I), d=50", 200),
    Case("null-w5", True, 5, 500, _null(5, True), "weighted N(0,I) both, gamma(2) weights", 200),
    Case("null-iw2", True, 2, 500, _importance_null, "N(0,I) vs reweighted N(.5e1,I)", 200),
    Case("shift-d2", False, 2, 500, _shift(2, 0.25, True), "shift |mu|=0.25 dense, d=2", 50),
    Case("shift-d8", False, 8, 500, _shift(8, 0.3, True), "shift |mu|=0.3 dense, d=8", 50),
    Case("shift-d32", False, 32, 500, _shift(32, 0.4, True), "shift |mu|=0.4 dense, d=32", 50),
    Case("shift-d64", False, 64, 500, _shift(64, 0.5, True), "shift |mu|=0.5 dense, d=64", 50),
    Case("one-of-50", False, 50, 500, _shift(50, 0.4, False), "feature 1 of 50 shifted 0.4", 50),
    Case("scale-d8", False, 8, 500, _scale(8, 1.1, False), "all 8 sd x1.1", 50),
    Case("scale-1of20", False, 20, 500, _scale(20, 1.3, True), "feature 1 of 20 sd x1.3", 50),
    Case("mix-d2", False, 2, 500, _mixture(2, 0.7), "bimodal vs N(0,1) in coord 1, d=2", 50),
    Case("mix-d20", False, 20, 500, _mixture(20, 0.7), "same, inside d=20", 50),
    Case("scale-1of50", False, 50, 500, _scale(50, 1.5, True), "feature 1 of 50 sd x1.5", 20),
    Case("mix-d50", False, 50, 500, _mixture(50, 0.9), "bimodal (m=0.9) in coord 1, d=50", 20),
    Case("wshift-d5", False, 5, 500, _weighted_shift(5, 0.35), "weighted, feature 1 +0.35", 50),
    Case("shift-d2-n200", False, 2, 200, _shift(2, 0.4, True), "shift |mu|=0.4, n=200", 50),
    Case("shift-d2-n2000", False, 2, 2000, _shift(2, 0.12, True), "shift |mu|=0.12, n=2000", 20),
    Case(
        "shift-d2-n1e5",
        False,
        2,
        100_000,
        _shift(2, 0.02, True),
        "shift |mu|=0.02, n=10^5 (time)",
        2,
        peers=False,
    ),
]
BY_NAME = {c.name: c for c in PANEL}

# --------------------------------------------------------------------------- the peers


def _pooled(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)])


def _distances(u: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", u, u)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (u @ u.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2, out=d2)


def kernel_permutation_test(
    matrix: np.ndarray,
    n: int,
    w: np.ndarray,
    permutations: int,
    rng: np.random.Generator,
    sign: float,
) -> tuple[float, float]:
    """Permutation test of T = sign * s^T M s, where s holds the first group's weights
    (normalised within it) and minus the second's: the V-statistic of the MMD (M = kernel,
    sign +1) or of the energy distance (M = distances, sign -1). Weights travel with their
    samples; each relabelled group's weights are renormalised. Returns (T, p-value)."""
    k = matrix.shape[0]

    def stats(groups: np.ndarray) -> np.ndarray:  # groups: (B, k) bool, True = first group
        wg = np.where(groups, w, 0.0)
        wr = np.where(groups, 0.0, w)
        s = wg / wg.sum(axis=1, keepdims=True) - wr / wr.sum(axis=1, keepdims=True)
        return sign * np.einsum("bi,bi->b", s @ matrix, s)

    first = np.zeros((1, k), bool)
    first[0, :n] = True
    t = float(stats(first)[0])
    block = max(1, min(permutations, 4_000_000 // k))
    null = np.empty(permutations)
    base = np.broadcast_to(np.arange(k) < n, (block, k))
    done = 0
    while done < permutations:
        size = min(block, permutations - done)
        null[done : done + size] = stats(rng.permuted(base[:size], axis=1))
        done += size
    exceed = int(np.count_nonzero(null >= t - 1e-12 * max(1.0, abs(t))))
    return t, (1 + exceed) / (1 + permutations)


def peer_tests(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray | None,
    b: np.ndarray | None,
    permutations: int,
    rng: np.random.Generator,
) -> dict[str, tuple[float, float, float]]:
    """{"energy": (statistic, p, seconds), "mmd": (...)} on all samples of both sets."""
    n, m = len(x), len(y)
    a = np.full(n, 1.0 / n) if a is None else np.asarray(a, np.float64) / np.sum(a)
    b = np.full(m, 1.0 / m) if b is None else np.asarray(b, np.float64) / np.sum(b)
    w = np.concatenate([a * n, b * m])
    t0 = time.perf_counter()
    dist = _distances(_pooled(x, y))
    t_dist = time.perf_counter() - t0
    out = {}
    t0 = time.perf_counter()
    out["energy"] = (*kernel_permutation_test(dist, n, w, permutations, rng, -1.0),)
    out["energy"] = (*out["energy"], t_dist + time.perf_counter() - t0)
    t0 = time.perf_counter()
    iu = np.triu_indices(n + m, 1)
    med = float(np.median(dist[iu])) or 1.0
    kern = np.exp(-(dist**2) / (2.0 * med * med))
    out["mmd"] = (*kernel_permutation_test(kern, n, w, permutations, rng, 1.0),)
    out["mmd"] = (*out["mmd"], t_dist + time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------- one replication


def _seed(name: str, rep: int) -> list[int]:
    return [sum(ord(c) * 31**i for i, c in enumerate(name)) % (2**31), rep]


def replicate(job: tuple[str, int, int, list[float], int, str, float]) -> dict[str, object]:
    """One replication of one case: lipcore at each holdout fraction, then the peers."""
    import torch

    from lipcore import estimate_w1

    torch.set_num_threads(1)
    name, rep, n, holdouts, permutations, config_json, alpha = job
    case = BY_NAME[name]
    rng = np.random.default_rng(_seed(name, rep))
    x, y, a, b = case.make(rng, n)
    config = {"permutations": permutations, **json.loads(config_json)}
    row: dict[str, object] = {"case": name, "rep": rep, "n": n}
    for h in holdouts:
        t0 = time.perf_counter()
        est = estimate_w1(x, y, a, b, config=config, holdout=h, seed=rep, device="cpu")
        assert est.test is not None and est.holdout is not None
        row[f"lip{h:g}"] = (est.test.p_value, time.perf_counter() - t0, est.steps)
    if case.peers:
        for peer, (_, p, sec) in peer_tests(x, y, a, b, permutations, rng).items():
            row[peer] = (p, sec, 0)
    return row


# --------------------------------------------------------------------------- parts


def _rate(ps: list[float], alpha: float, null: bool) -> tuple[float, float]:
    """The rejection rate and its Monte-Carlo s.e. (under H0: at the nominal alpha)."""
    r = sum(p <= alpha for p in ps) / len(ps)
    q = alpha if null else r
    return r, math.sqrt(q * (1 - q) / len(ps))


def panel(args: argparse.Namespace) -> None:
    names = args.cases or [c.name for c in PANEL if args.big or c.n <= 20_000]
    if args.quick and not args.cases:
        names = ["null-d2", "shift-d2", "wshift-d5"]
    if args.table:  # tabulate replications written by an earlier --json run
        with open(args.table) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        table([n for n in names if any(r["case"] == n for r in rows)], rows, args)
        return
    jobs = []
    for name in names:
        case = BY_NAME[name]
        n = args.n or case.n
        reps = args.reps or case.reps
        if args.quick:
            reps, n = min(reps, 2), min(n, 200)
        jobs += [
            (name, r, n, args.holdouts, args.permutations, args.config, args.alpha)
            for r in range(reps)
        ]
    jobs.sort(key=lambda job: job[1])  # replication-major: a run cut short stays balanced
    t0 = time.perf_counter()
    rows: list[dict[str, object]] = []
    out = open(args.json, "a") if args.json else None  # noqa: SIM115 (one line per replication)
    with ProcessPoolExecutor(args.jobs) as pool:
        for i, row in enumerate(pool.map(replicate, jobs, chunksize=1)):
            rows.append(row)
            if out is not None:
                out.write(json.dumps(row) + "\n")
                out.flush()
            _progress(i + 1, len(jobs), t0)
    if out is not None:
        out.close()
    table(names, rows, args)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s with {args.jobs} process(es)")


def table(names: list[str], rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    print(file=sys.stderr)
    methods = [f"lip{h:g}" for h in args.holdouts] + ["energy", "mmd"]
    head = ["case", "H0?", "d", "n", "reps"] + [
        f"lipcore h={h:g}" if m.startswith("lip") else m
        for m, h in zip(methods, [*args.holdouts, 0, 0], strict=True)
    ]
    print(f"\nalpha = {args.alpha}, permutations = {args.permutations}, config = {args.config}")
    print("rejection rate ± Monte-Carlo s.e. (size under H0, power otherwise); seconds per test\n")
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for name in names:
        case = BY_NAME[name]
        rs = [r for r in rows if r["case"] == name]
        cells = [name, "yes" if case.null else "no", str(case.d), str(rs[0]["n"]), str(len(rs))]
        for m in methods:
            vals = [r[m] for r in rs if m in r]
            if not vals:
                cells.append("n/a")
                continue
            ps = [float(v[0]) for v in vals]  # type: ignore[index]
            secs = [float(v[1]) for v in vals]  # type: ignore[index]
            rate, se = _rate(ps, args.alpha, case.null)
            digits = 3 if case.null else 2
            cells.append(f"{rate:.{digits}f} ± {se:.{digits}f} ({statistics.median(secs):.2g} s)")
        print("| " + " | ".join(cells) + " |")


def _progress(i: int, total: int, t0: float) -> None:
    el = time.perf_counter() - t0
    print(f"\r{i}/{total} replications, {el:.0f} s", end="", file=sys.stderr, flush=True)


def overhead(args: argparse.Namespace) -> None:
    """Time of the verdict at n = 10^5 per set (d = 2): estimate_w1 with 1000 permutations
    against 1 permutation, and permutation_test alone on arrays of the held-out size."""
    import torch

    from lipcore import estimate_w1
    from lipcore.train import Progress
    from lipcore.twosample import permutation_test

    torch.set_num_threads(args.threads)
    n = 2_000 if args.quick else args.overhead_n
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 2))
    y = rng.normal(size=(n, 2)) + 0.05
    estimate_w1(x[:500], y[:500], config={"permutations": 1})  # warm-up (first-call costs)
    rows = []
    for rep in range(1 if args.quick else 2):
        for perms in (1, 1000):
            marks: dict[str, float] = {}

            def mark(progress: Progress, marks: dict[str, float] = marks) -> None:
                marks.setdefault(progress.phase, time.perf_counter())

            t0 = time.perf_counter()
            est = estimate_w1(x, y, config={"permutations": perms}, seed=rep, callback=mark)
            end = time.perf_counter()
            assert est.test is not None
            # The "testing" phase: from its mark to the next phase's (the bracket, where this
            # lipcore has one) or to the end
            testing = marks.get("bracketing", end) - marks["testing"]
            bracket = end - marks.get("bracketing", end)
            rows.append((rep, perms, end - t0, testing, bracket, est.steps, est.test.p_value))
    k = int(round(0.2 * n))
    alone = []
    for rep in range(5):
        fx, fy = rng.normal(size=k), rng.normal(size=k)
        w = np.full(k, 1.0 / k)
        t0 = time.perf_counter()
        permutation_test(fx, w, fy, w, 1000, np.random.default_rng(rep))
        alone.append(time.perf_counter() - t0)
    print(f"\nverdict overhead, n = {n} per set, d = 2, shift 0.05 per coordinate, held-out {k}")
    print(f"per set, holdout 0.2, {args.threads} torch thread(s)")
    print(
        "| rep | permutations | estimate_w1 s | testing s | bracketing s | with test / without "
        "| without bracket: with / without test | steps | p-value |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for rep, perms, sec, testing, bracket, steps, pv in rows:
        share = sec / (sec - testing)
        core = (sec - bracket) / (sec - bracket - testing)
        cells = [str(rep), str(perms), f"{sec:.2f}", f"{testing:.3f}", f"{bracket:.2f}"]
        print(
            "| "
            + " | ".join([*cells, f"{share:.3f}x", f"{core:.3f}x", str(steps), f"{pv:.3g}"])
            + " |"
        )
    print(
        f"permutation_test alone (1000 permutations, {k} + {k} values): median "
        f"{statistics.median(alone):.3f} s (min {min(alone):.3f}, max {max(alone):.3f})"
    )
    full = [(sec, testing, br) for _, p, sec, testing, br, _, _ in rows if p == 1000]
    print(
        "estimate with its verdict / the same estimate without the testing phase "
        f"(1000 permutations): {', '.join(f'{s / (s - t):.3f}x' for s, t, _ in full)}; "
        "leaving the bracket out of both: "
        f"{', '.join(f'{(s - b) / (s - b - t):.3f}x' for s, t, b in full)}"
    )


def heldout20(args: argparse.Namespace) -> None:
    """The held-out distance on two 5000 x 20 samples, feature 1 shifted by 0.5 (W1 = 0.5)."""
    import torch

    from lipcore import estimate_w1

    torch.set_num_threads(args.threads)
    n = 1000 if args.quick else 5000
    seeds = range(1 if args.quick else 5)
    print(f"\nheld-out W1, two {n} x 20 samples, feature 1 shifted by 0.5 (true W1 = 0.5)")
    print("| seed | holdout | value | 95 % CI | covers 0.5 | p-value | steps | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    config = json.loads(args.config)
    for h in args.holdouts:
        vals, cover, secs = [], 0, []
        for seed in seeds:
            rng = np.random.default_rng(1000 + seed)
            x = rng.normal(size=(n, 20))
            y = rng.normal(size=(n, 20))
            y[:, 0] += 0.5
            t0 = time.perf_counter()
            est = estimate_w1(x, y, config=config, holdout=h, seed=seed)
            sec = time.perf_counter() - t0
            assert est.holdout is not None and est.test is not None
            lo, hi = est.holdout.ci95
            vals.append(est.holdout.value)
            cover += lo <= 0.5 <= hi
            secs.append(sec)
            print(
                f"| {seed} | {h:g} | {est.holdout.value:.3f} | [{lo:.3f}, {hi:.3f}] | "
                f"{'yes' if lo <= 0.5 <= hi else 'no'} | {est.test.p_value:.3g} | {est.steps} | "
                f"{sec:.1f} |"
            )
        sd = statistics.stdev(vals) if len(vals) > 1 else math.nan
        print(
            f"holdout {h:g}: mean {statistics.mean(vals):.3f} (sd {sd:.3f}), "
            f"CI covers 0.5 in {cover}/{len(vals)}, median {statistics.median(secs):.1f} s "
            "per estimate"
        )


def crosscheck(args: argparse.Namespace) -> None:
    """Own energy and MMD against dcor.homogeneity.energy_test and hyppo's MMD."""
    import dcor

    print("\npeers: own implementation against dcor / hyppo (same data, 500 permutations each)")
    print("| data | energy stat own / dcor | energy p own / dcor | mmd p own / hyppo |")
    print("| --- | --- | --- | --- |")
    sets = (
        [("shift-d2", 200)]
        if args.quick
        else [
            ("shift-d2", 300),
            ("one-of-50", 300),
            ("mix-d2", 300),
        ]
    )
    for name, n in sets:
        rng = np.random.default_rng(_seed(name, 999))
        x, y, _, _ = BY_NAME[name].make(rng, n)
        own = peer_tests(x, y, None, None, 500, np.random.default_rng(1))
        e = dcor.homogeneity.energy_test(x, y, num_resamples=500, random_state=1)
        # dcor's statistic: n m / (n + m) times the V-statistic of the energy distance
        own_stat = own["energy"][0] * n * n / (2 * n)
        hyppo_p = float("nan")
        if not args.quick:
            from hyppo.ksample import MMD

            _, hyppo_p = MMD(compute_kernel="gaussian").test(
                x, y, reps=500, auto=False, random_state=1
            )
        print(
            f"| {name} n={n} | {own_stat:.5g} / {float(e.statistic):.5g} | "
            f"{own['energy'][1]:.3f} / {float(e.pvalue):.3f} | {own['mmd'][1]:.3f} / "
            f"{hyppo_p:.3f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["panel", "overhead", "heldout20", "crosscheck"])
    p.add_argument("--cases", nargs="+", choices=list(BY_NAME), help="panel cases (default all)")
    p.add_argument("--reps", type=int, help="replications per case (default: the case's)")
    p.add_argument("--n", type=int, help="samples per set (default: the case's)")
    p.add_argument("--holdouts", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--permutations", type=int, default=1000)
    p.add_argument("--config", default="{}", help="JSON EstimatorConfig overrides for lipcore")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (1 thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads: overhead, heldout20")
    p.add_argument("--overhead-n", type=int, default=100_000)
    p.add_argument("--big", action="store_true", help="include the n = 10^5 panel case")
    p.add_argument("--quick", action="store_true", help="a few small replications (smoke check)")
    p.add_argument("--json", help="append the panel's replications here (JSON lines)")
    p.add_argument("--table", help="only tabulate the replications of an earlier --json file")
    args = p.parse_args()
    if args.quick:
        args.permutations = min(args.permutations, 200)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parts = {"panel": panel, "overhead": overhead, "heldout20": heldout20, "crosscheck": crosscheck}
    for part in args.parts:
        parts[part](args)


if __name__ == "__main__":
    main()

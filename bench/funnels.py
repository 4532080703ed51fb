"""Hard pairs with a known W1 and transport direction: the MinFunnels benchmark (issue 15).

The construction of Korotin, Kolesov and Burnaev ("Kantorovich Strikes Back! Wasserstein GANs are
not Optimal Transport?", NeurIPS 2022), written from the paper's description:

- the potential u(z) = min_k (|z - c_k| + b_k): N funnels (cones) with centres c_k uniform in the
  cube [-h, h]^D (h = 2.5) and offsets b_k ~ 0.1 N(0, 1); u is 1-Lipschitz;
- the target Q is uniform on the cube; a point y of Q belongs to the funnel k active at y, and is
  moved along the ray from c_k through y: with t = |y - c_k| / |e - c_k|, where e is where the ray
  leaves funnel k's cell or the cube, its source point is x = c_k + t^deg (e - c_k) (deg = 8);
- the source P is the law of x. The segment [c_k, y] lies in funnel k's cell (the cell is
  star-shaped about c_k), so u(y) - u(x) = |y - x| on every pair: the pairs are an optimal plan,
  u is an optimal potential, W1(P, Q) = E |y - x|, and the transport direction at x is the unit
  vector (x - c_k) / |x - c_k| = grad u(x).

Each cell (D, N) runs ``estimate_w1`` on n independent samples of P (source) and of Q (target);
lipcore's potential f is high on the source, so f ~ -u and the cosine reported is the mean of
cos(-grad f(x), grad u(x)) over fresh samples x of P (the paper's cosine metric). Errors are
relative to the true W1 (E |y - x| by sampling the plan, with its standard error).

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.funnels                   # the issue's 6 cells
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.funnels --grid            # D 2,4,16,64 x N 4..256
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.funnels --cells 2x64 16x64 --seeds 0 1 \\
        --config '{"steps": 4000}'
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from lipcore import EstimatorConfig, estimate_w1, evaluate

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

#: Rows per chunk of the (rows x N) funnel computations (bounded temporaries).
CHUNK = 8192


@dataclass(frozen=True)
class Funnels:
    """A MinFunnels pair: the funnels' centres (N, D) and offsets (N,), the half-side h of the
    cube and the degree of the radial squeeze that moves Q's points towards the centres."""

    centers: F64
    bias: F64
    half: float = 2.5
    deg: float = 8.0

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    def _values(self, z: F64) -> F64:
        """|z - c_k| + b_k for every row and funnel, (rows, N)."""
        sq = (z * z).sum(1)[:, None] + (self.centers**2).sum(1)[None, :] - 2.0 * z @ self.centers.T
        return np.sqrt(np.maximum(sq, 0.0)) + self.bias[None, :]

    def potential(self, z: F64) -> tuple[F64, I64]:
        """u(z) = min_k |z - c_k| + b_k and the active funnel k of each row."""
        u = np.empty(len(z))
        k = np.empty(len(z), dtype=np.int64)
        for i in range(0, len(z), CHUNK):
            v = self._values(z[i : i + CHUNK])
            k[i : i + CHUNK] = v.argmin(1)
            u[i : i + CHUNK] = np.take_along_axis(v, k[i : i + CHUNK, None], 1)[:, 0]
        return u, k

    def direction(self, x: F64) -> F64:
        """The transport direction at each row x: grad u(x) = (x - c_k) / |x - c_k| (unit; not
        defined at a centre, where about 1 % of P's points lie in 2-D after the t^8 squeeze)."""
        _, k = self.potential(x)
        v = x - self.centers[k]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def _pull(self, y: F64) -> F64:
        """The source point of each target row y (see the module docstring)."""
        c, b = self.centers, self.bias
        vals = self._values(y)
        k = vals.argmin(1)
        m = vals[np.arange(len(y)), k]  # u(y)
        ray = y - c[k]
        length = np.linalg.norm(ray, axis=1)
        v = ray / np.maximum(length, 1e-300)[:, None]
        # Where the ray y + r v (r > 0) leaves the cube.
        with np.errstate(divide="ignore", invalid="ignore"):
            walls = (np.sign(v) * self.half - y) / v
        r_cube = np.where(np.isfinite(walls) & (walls >= 0), walls, np.inf).min(1)
        # Where funnel j takes over: |y - c_j + r v| = u(y) - b_j + r, linear in r once squared;
        # a crossing at r > 0 exists iff u(y) - b_j > (y - c_j).v (the difference of the two
        # sides falls from >= 0 at r = 0 towards (y - c_j).v - u(y) + b_j at infinity).
        da_sq = (vals - b[None, :]) ** 2  # |y - c_j|^2
        db = m[:, None] - b[None, :]
        proj = (v * y).sum(1)[:, None] - v @ c.T  # (y - c_j).v
        den = db - proj
        with np.errstate(divide="ignore", invalid="ignore"):
            r = 0.5 * (da_sq - db**2) / den
        ok = (den > 1e-12) & (r > 0)
        ok[np.arange(len(y)), k] = False
        r_cell = np.where(ok, r, np.inf).min(1)
        reach = length + np.minimum(r_cube, r_cell)  # |e - c_k|
        t = np.where(reach > 0, length / np.where(reach > 0, reach, 1.0), 0.0)
        return c[k] + (t**self.deg * reach)[:, None] * v

    def sample_plan(self, n: int, rng: np.random.Generator) -> tuple[F64, F64]:
        """n pairs (x, y) of the optimal plan: y ~ Q (uniform on the cube), x its source point."""
        y = rng.uniform(-self.half, self.half, size=(n, self.dim))
        x = np.empty_like(y)
        for i in range(0, n, CHUNK):
            x[i : i + CHUNK] = self._pull(y[i : i + CHUNK])
        return x, y

    def true_w1(self, n: int, rng: np.random.Generator) -> tuple[float, float]:
        """W1(P, Q) = E |y - x| over the plan, by sampling n pairs, and its standard error."""
        x, y = self.sample_plan(n, rng)
        cost = np.linalg.norm(y - x, axis=1)
        return float(cost.mean()), float(cost.std(ddof=1) / math.sqrt(n))


def make_funnels(dim: int, n_funnels: int, seed: int = 987, half: float = 2.5) -> Funnels:
    """Centres uniform in [-half, half]^dim, offsets 0.1 N(0, 1), from a seeded generator."""
    rng = np.random.default_rng([seed, dim, n_funnels])
    centers = rng.uniform(-half, half, size=(n_funnels, dim))
    bias = 0.1 * rng.normal(size=n_funnels)
    return Funnels(centers, bias, half)


def plan_direction(x: F64, y: F64) -> F64:
    """The unit transport direction (y - x) / |y - x| of plan pairs: grad u(x), exact even where
    x is (in float64) a funnel's centre, where ``Funnels.direction`` is undefined."""
    v = y - x
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


def cosine(potential: torch.nn.Module, x: F64, direction: F64) -> float:
    """Mean cos(-grad f(x), direction): f is high on the source P, u (whose gradient the true
    direction is) on the target Q."""
    _, grad = evaluate(potential, x, chunk=len(x), grad=True)
    g = -grad
    num = (g * direction).sum(1)
    den = np.linalg.norm(g, axis=1) * np.linalg.norm(direction, axis=1) + 1e-300
    return float((num / den).mean())


@dataclass
class Row:
    """One run of one cell: errors relative to the true W1, cosine, time, steps."""

    dim: int
    n_funnels: int
    seed: int
    w1: float
    w1_se: float
    lower: float
    holdout: float
    cos: float
    seconds: float
    steps: int
    form: str = "network"

    @property
    def err_lower(self) -> float:
        return (self.lower - self.w1) / self.w1

    @property
    def err_holdout(self) -> float:
        return (self.holdout - self.w1) / self.w1


def run_cell(
    dim: int,
    n_funnels: int,
    *,
    n: int,
    seed: int,
    config: EstimatorConfig,
    pair_seed: int,
    w1_samples: int,
    cos_samples: int,
    holdout: float,
) -> Row:
    """Builds the pair, samples n points of each distribution independently (unpaired), runs
    estimate_w1 and scores it against the pair's true W1 and direction field."""
    funnels = make_funnels(dim, n_funnels, pair_seed)
    w1, se = funnels.true_w1(w1_samples, np.random.default_rng([pair_seed, dim, n_funnels, 1]))
    rng = np.random.default_rng([seed, dim, n_funnels, 2])
    x, _ = funnels.sample_plan(n, rng)  # source P
    y = rng.uniform(-funnels.half, funnels.half, size=(n, dim))  # target Q, independent of x
    est = estimate_w1(x, y, config=config, holdout=holdout, seed=seed)
    assert est.holdout is not None
    px, py = funnels.sample_plan(cos_samples, rng)
    cos = cosine(est.potential, px, plan_direction(px, py))
    h = est.holdout.value
    env = est.envelope
    form = "network" if env is None else env.kept
    return Row(dim, n_funnels, seed, w1, se, est.lower_bound, h, cos, est.seconds, est.steps, form)


ISSUE_CELLS = ["2x4", "2x16", "2x64", "16x4", "16x16", "16x64"]
GRID_CELLS = [f"{d}x{k}" for d in (2, 4, 16, 64) for k in (4, 16, 64, 256)]


def _cell(text: str) -> tuple[int, int]:
    d, k = text.lower().split("x")
    return int(d), int(k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="*", help=f"DxN cells (default: {' '.join(ISSUE_CELLS)})")
    p.add_argument("--grid", action="store_true", help="all of D 2,4,16,64 x N 4,16,64,256")
    p.add_argument("--n", type=int, default=20000, help="samples per distribution")
    p.add_argument("--seeds", type=int, nargs="*", default=[0], help="data and fit seeds")
    p.add_argument("--config", default="{}", help="JSON overrides of EstimatorConfig")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--pair-seed", type=int, default=987, help="seed of the funnels")
    p.add_argument("--w1-samples", type=int, default=200000, help="plan samples for the true W1")
    p.add_argument("--cos-samples", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = EstimatorConfig.from_dict(json.loads(args.config))
    default = EstimatorConfig()
    overrides = {k: v for k, v in config.to_dict().items() if v != getattr(default, k)}
    cells = GRID_CELLS if args.grid else (args.cells or ISSUE_CELLS)
    print(
        f"config overrides: {overrides or 'none (defaults)'}; n {args.n} per set, holdout"
        f" {args.holdout}, seeds {args.seeds}, pair seed {args.pair_seed}, threads {args.threads}"
    )
    head = (
        "| D | N | true W1 (se) | lower_bound err % | holdout err % | cos | s/case | steps"
        " | potential |"
    )
    print(head)
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    summary: list[Row] = []
    for text in cells:
        dim, k = _cell(text)
        rows = [
            run_cell(
                dim,
                k,
                n=args.n,
                seed=s,
                config=config,
                pair_seed=args.pair_seed,
                w1_samples=args.w1_samples,
                cos_samples=args.cos_samples,
                holdout=args.holdout,
            )
            for s in args.seeds
        ]
        summary += rows

        def mean(vals: list[float]) -> str:
            if len(vals) == 1:
                return f"{vals[0]:+.1f}"
            return f"{statistics.mean(vals):+.1f} ± {statistics.stdev(vals):.1f}"

        r0 = rows[0]
        print(
            f"| {dim} | {k} | {r0.w1:.4f} ({r0.w1_se:.4f}) |"
            f" {mean([100 * r.err_lower for r in rows])} |"
            f" {mean([100 * r.err_holdout for r in rows])} |"
            f" {statistics.mean(r.cos for r in rows):.3f} |"
            f" {statistics.mean(r.seconds for r in rows):.1f} |"
            f" {round(statistics.mean(r.steps for r in rows))} |"
            f" {', '.join(sorted({r.form for r in rows}))} |",
            flush=True,
        )
    if args.seeds and len(summary) > 1:
        worst = max(summary, key=lambda r: abs(r.err_holdout))
        print(
            f"\nworst |holdout err| {100 * abs(worst.err_holdout):.1f} % ({worst.dim}x"
            f"{worst.n_funnels} seed {worst.seed}); mean cos"
            f" {statistics.mean(r.cos for r in summary):.3f}; total"
            f" {sum(r.seconds for r in summary):.0f} s"
        )


if __name__ == "__main__":
    main()

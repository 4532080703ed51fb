"""An upper bound of the empirical W1: the exact float64 cost of an explicit coupling.

With the certified lower bound of a potential f it brackets the exact empirical W1 at any n:
``lower_bound <= exact <= upper_bound``. Every coupling of the two weighted sets is feasible for
the primal problem, so its cost is an upper bound; the work is in making it tight and cheap.

The coupling is built in three steps, each keeping it feasible and never raising its cost:

1. *Rank coupling.* Both sets are ordered by a key (the potential's values: the optimal plan moves
   mass down the gradient of f, so the ranks of f roughly align sources with their targets) and
   coupled monotonically (the north-west-corner rule on the cumulative weights: mass is split
   exactly at the edges, for any weights and any n, m). Without a potential the key is the
   projection on the difference of the weighted means (a linear potential).
2. *Block refinement.* The coupling's pairs, in key order, are cut into blocks of ``block``
   pairs; inside each block the sub-problem between the block's source and target masses is
   solved exactly (POT's network simplex, Euclidean cost from direct differences) and replaces
   the block's pairs when it is cheaper. Further passes cut the pairs again with shifted edges
   (alternately in the source's and the target's key order), so that mass can cross the edges
   of the previous pass.
3. *Certification.* The cost is summed over the coupling's pairs from direct float64
   differences (``math.fsum``), plus an allowance for what rounding may have left: the coupling's
   marginal defect times a bound of the diameter (exact repair argument: trimming the excess
   and coupling the deficits anyhow costs at most that), and a relative (d + 8) * 2^-52 for the
   rounding of the distances.

Memory: O(n + m) for the coupling and the keys, plus ``block``**2 per sub-problem.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import nn

from .certify import evaluate
from .exact import NUM_ITER_MAX
from .validation import validate_inputs

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

DEFAULT_BLOCK = 128
DEFAULT_PASSES = 2
_EPS = 2.0**-52
_PAIR_CHUNK = 1 << 16  # pairs per chunk when summing the cost (bounded temporaries)


@dataclass(frozen=True)
class Coupling:
    """A sparse coupling: ``mass[k]`` moves from source row ``i[k]`` to target row ``j[k]``."""

    i: I64
    j: I64
    mass: F64

    def marginals(self, n: int, m: int) -> tuple[F64, F64]:
        """Row and column sums (the source and target masses the coupling moves)."""
        rows = np.bincount(self.i, weights=self.mass, minlength=n).astype(np.float64)
        cols = np.bincount(self.j, weights=self.mass, minlength=m).astype(np.float64)
        return rows, cols


@dataclass(frozen=True)
class UpperBound:
    """The result of :func:`upper_bound`.

    value: the certified upper bound of the empirical W1 (cost + rounding allowance).
    cost: the coupling's cost, sum of mass * ||x_i - y_j|| over its pairs (float64, fsum).
    method: how the coupling was built ("potential-blocks", "projection-blocks", "key-blocks").
    seconds: wall time of the whole computation (keys included).
    blocks: exact sub-problems solved; passes: refinement passes run; block: pairs per block.
    pairs: pairs in the coupling (its support size).
    defect: the coupling's marginal defect, sum |row sums - a| + |column sums - b| (rounding).
    history: the cost after the rank coupling and after each pass.
    coupling: the coupling itself when asked for (``return_coupling=True``), else None.
    """

    value: float
    cost: float
    method: str
    seconds: float
    blocks: int
    passes: int
    block: int
    pairs: int
    defect: float
    history: list[float] = field(default_factory=list)
    coupling: Coupling | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (no coupling)."""
        return {
            "value": self.value,
            "cost": self.cost,
            "method": self.method,
            "seconds": self.seconds,
            "blocks": self.blocks,
            "passes": self.passes,
            "block": self.block,
            "pairs": self.pairs,
            "defect": self.defect,
            "history": list(self.history),
        }


def bracket_width(lower: float, upper: float) -> float:
    """(upper - lower) / upper: the relative width of the bracket [lower, upper] of the exact
    empirical W1 (0 when upper is 0: then both are 0, the sets coincide)."""
    if upper <= 0:
        return 0.0
    return (upper - lower) / upper


# --------------------------------------------------------------------------- pieces


def _rows(s: np.ndarray, idx: np.ndarray) -> F64:
    return np.asarray(s[idx], dtype=np.float64)


def pair_costs(x: np.ndarray, y: np.ndarray, i: I64, j: I64) -> F64:
    """||x_i - y_j|| for each pair, from direct float64 differences (chunked)."""
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), _PAIR_CHUNK):
        diff = _rows(x, i[s : s + _PAIR_CHUNK]) - _rows(y, j[s : s + _PAIR_CHUNK])
        out[s : s + _PAIR_CHUNK] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def _diameter(x: np.ndarray, y: np.ndarray, chunk: int = 1 << 16) -> float:
    """An upper bound of every ||x_i - y_j||: the diagonal of the bounding box of both sets."""
    d = int(x.shape[1])
    lo = np.full(d, np.inf)
    hi = np.full(d, -np.inf)
    for s in (x, y):
        for k in range(0, s.shape[0], chunk):
            c = np.asarray(s[k : k + chunk], dtype=np.float64)
            lo = np.minimum(lo, c.min(axis=0))
            hi = np.maximum(hi, c.max(axis=0))
    diagonal = float(np.sqrt(np.sum((hi - lo) ** 2)))
    return diagonal * (1.0 + (d + 4) * _EPS)


def rank_coupling(ka: F64, a: F64, kb: F64, b: F64) -> tuple[Coupling, I64, I64]:
    """The monotone (north-west-corner) coupling of (a, b) in the order of the keys ka, kb.

    Returns the coupling, its pairs in key order, and the orders themselves (row indices of the
    sources and of the targets sorted by key)."""
    ox = np.argsort(ka, kind="stable").astype(np.int64)
    oy = np.argsort(kb, kind="stable").astype(np.int64)
    ca = np.cumsum(a[ox])
    cb = np.cumsum(b[oy])
    ca[-1] = cb[-1] = 1.0
    cuts = np.union1d(ca, cb)  # sorted, unique, ends at 1
    edges = np.concatenate([[0.0], cuts])
    mass = np.diff(edges)
    keep = mass > 0
    lo = edges[:-1][keep]
    mass = mass[keep]
    # the atom covering [lo, lo + mass): the first whose cumulative weight exceeds lo
    pi = np.minimum(np.searchsorted(ca, lo, side="right"), len(ox) - 1)
    pj = np.minimum(np.searchsorted(cb, lo, side="right"), len(oy) - 1)
    return Coupling(ox[pi], oy[pj], mass), ox, oy


def _solve_block(
    x: np.ndarray, y: np.ndarray, i: I64, j: I64, w: F64, old_cost: float
) -> tuple[I64, I64, F64] | None:
    """The exact OT between the block's source and target masses (the row and column sums of
    its pairs): the new pairs when cheaper than ``old_cost``, else None."""
    import ot
    from scipy.spatial.distance import cdist

    ux, ix = np.unique(i, return_inverse=True)
    uy, iy = np.unique(j, return_inverse=True)
    if len(ux) == 1 or len(uy) == 1:
        return None  # a star: every coupling of one atom with the others is the same
    total = float(w.sum())
    if total <= 0:
        return None
    am = np.bincount(ix, weights=w, minlength=len(ux)) / total
    bm = np.bincount(iy, weights=w, minlength=len(uy)) / total
    xs = _rows(x, ux)
    ys = _rows(y, uy)
    c = xs.mean(axis=0)
    cost_matrix = cdist(xs - c, ys - c, metric="euclidean")
    g, log = ot.emd(am, bm, cost_matrix, numItermax=NUM_ITER_MAX, log=True, check_marginals=False)
    if int(log.get("result_code", -1)) != 1:
        return None
    r, s = np.nonzero(g)
    new_w = g[r, s] * total
    ni, nj = ux[r].astype(np.int64), uy[s].astype(np.int64)
    if float(np.dot(new_w, pair_costs(x, y, ni, nj))) >= old_cost:
        return None
    return ni, nj, new_w


def _solve_window(
    x: np.ndarray, y: np.ndarray, i: I64, j: I64, w: F64, old_cost: float, neighbours: int
) -> tuple[I64, I64, F64] | None:
    """As ``_solve_block`` on a sparse graph: the window's own pairs (a feasible flow, so the
    restricted problem is feasible) and each atom's ``neighbours`` nearest atoms of the other
    side within the window (k-d trees); POT's sparse network simplex solves it exactly."""
    import ot
    import scipy.sparse
    from scipy.spatial import cKDTree

    ux, ix = np.unique(i, return_inverse=True)
    uy, iy = np.unique(j, return_inverse=True)
    nx_, ny_ = len(ux), len(uy)
    if nx_ == 1 or ny_ == 1:
        return None
    total = float(w.sum())
    if total <= 0:
        return None
    am = np.bincount(ix, weights=w, minlength=nx_) / total
    bm = np.bincount(iy, weights=w, minlength=ny_) / total
    xs = _rows(x, ux)
    ys = _rows(y, uy)
    c = xs.mean(axis=0)
    xs -= c
    ys -= c
    kx = min(neighbours, ny_)
    ky = min(neighbours, nx_)
    _, nb_x = cKDTree(ys).query(xs, k=kx)
    _, nb_y = cKDTree(xs).query(ys, k=ky)
    ei = np.concatenate([np.repeat(np.arange(nx_), kx), np.asarray(nb_y).reshape(-1), ix])
    ej = np.concatenate([np.asarray(nb_x).reshape(-1), np.repeat(np.arange(ny_), ky), iy])
    key = np.unique(ei.astype(np.int64) * ny_ + ej)
    ei, ej = key // ny_, key % ny_
    diff = xs[ei] - ys[ej]
    ec = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    graph = scipy.sparse.coo_matrix((ec, (ei, ej)), shape=(nx_, ny_))
    g, log = ot.emd(am, bm, graph, numItermax=NUM_ITER_MAX, log=True, check_marginals=False)
    if int(log.get("result_code", -1)) != 1:
        return None
    g = g.tocoo()
    keep = g.data > 0
    new_w = np.asarray(g.data[keep], dtype=np.float64) * total
    ni = ux[np.asarray(g.row[keep], dtype=np.int64)].astype(np.int64)
    nj = uy[np.asarray(g.col[keep], dtype=np.int64)].astype(np.int64)
    if float(np.dot(new_w, pair_costs(x, y, ni, nj))) >= old_cost:
        return None
    return ni, nj, new_w


def refine(
    x: np.ndarray,
    y: np.ndarray,
    coupling: Coupling,
    order: I64,
    block: int,
    offset: int,
    costs: F64,
    neighbours: int = 0,
    deadline: float = math.inf,
) -> tuple[Coupling, F64, int]:
    """One pass: the pairs, taken in ``order``, cut into runs of ``block`` starting at
    ``offset``; each run re-solved exactly (kept only when cheaper). Returns the new coupling,
    its pair costs and the number of sub-problems solved."""
    i, j, w = coupling.i[order], coupling.j[order], coupling.mass[order]
    c = costs[order]
    starts = list(range(0, len(i), block))
    if offset:
        starts = [0] + list(range(offset, len(i), block))
    starts.append(len(i))
    out_i: list[I64] = []
    out_j: list[I64] = []
    out_w: list[F64] = []
    out_c: list[F64] = []
    solved = 0
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        if e - s < 2 or time.perf_counter() > deadline:
            res = None
        else:
            solved += 1
            old = float(np.dot(w[s:e], c[s:e]))
            if neighbours:
                res = _solve_window(x, y, i[s:e], j[s:e], w[s:e], old, neighbours)
            else:
                res = _solve_block(x, y, i[s:e], j[s:e], w[s:e], old)
        if res is None:
            out_i.append(i[s:e])
            out_j.append(j[s:e])
            out_w.append(w[s:e])
            out_c.append(c[s:e])
        else:
            out_i.append(res[0])
            out_j.append(res[1])
            out_w.append(res[2])
            out_c.append(pair_costs(x, y, res[0], res[1]))
    new = Coupling(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_w))
    return new, np.concatenate(out_c), solved


def _keys(
    xs: np.ndarray,
    ys: np.ndarray,
    aw: F64,
    bw: F64,
    potential: nn.Module | None,
    fx: object,
    fy: object,
    chunk: int,
) -> tuple[F64, F64, str]:
    if fx is not None or fy is not None:
        if fx is None or fy is None:
            raise ValueError("fx and fy: give both (the potential's values on x and on y) or none")
        kx = np.asarray(fx, dtype=np.float64).reshape(-1)
        ky = np.asarray(fy, dtype=np.float64).reshape(-1)
        if kx.shape[0] != xs.shape[0] or ky.shape[0] != ys.shape[0]:
            raise ValueError(
                f"fx, fy: {kx.shape[0]} and {ky.shape[0]} values for {xs.shape[0]} and "
                f"{ys.shape[0]} samples"
            )
        if not (np.isfinite(kx).all() and np.isfinite(ky).all()):
            raise ValueError("fx, fy: contain NaN or infinite values")
        return kx, ky, "key-blocks"
    if potential is not None:
        if not isinstance(potential, nn.Module):
            raise ValueError(
                f"potential: expected a torch nn.Module, got {type(potential).__name__}"
            )
        kx = evaluate(potential, xs, chunk=chunk)
        ky = evaluate(potential, ys, chunk=chunk)
        return kx, ky, "potential-blocks"
    u = _weighted_mean(ys, bw, chunk) - _weighted_mean(xs, aw, chunk)
    if not np.any(u):
        u = np.zeros(xs.shape[1])
        u[0] = 1.0
    kx = np.concatenate(
        [np.asarray(xs[k : k + chunk], np.float64) @ u for k in range(0, len(aw), chunk)]
    )
    ky = np.concatenate(
        [np.asarray(ys[k : k + chunk], np.float64) @ u for k in range(0, len(bw), chunk)]
    )
    return -kx, -ky, "projection-blocks"


def _weighted_mean(s: np.ndarray, w: F64, chunk: int) -> F64:
    acc = np.zeros(s.shape[1])
    for k in range(0, len(w), chunk):
        acc += w[k : k + chunk] @ np.asarray(s[k : k + chunk], dtype=np.float64)
    return acc


# --------------------------------------------------------------------------- public


def upper_bound(
    x: object,
    y: object,
    a: object = None,
    b: object = None,
    potential: nn.Module | None = None,
    *,
    fx: object = None,
    fy: object = None,
    block: int = DEFAULT_BLOCK,
    passes: int = DEFAULT_PASSES,
    window: int = 0,
    neighbours: int = 8,
    max_seconds: float | None = None,
    chunk: int = 65536,
    return_coupling: bool = False,
) -> UpperBound:
    """A certified upper bound of the exact empirical W1 between (x, a) and (y, b), Euclidean
    cost: the float64 cost of an explicit coupling (see the module's docstring), so that
    ``lower_bound <= exact <= upper_bound(...).value`` for every input.

    The coupling follows the order of a key on the samples: ``fx``, ``fy`` (the potential's
    values on x and y, when already computed, e.g. ``Certificate.fx``/``fy``), else
    ``potential`` evaluated on every row (``lipcore.evaluate``, ``chunk`` rows at a time), else
    the projection on the difference of the weighted means (method "projection-blocks").

    block: pairs per exact dense sub-problem (time per pair grows about linearly with it);
    passes: refinement passes after the first (alternately in source and target key order);
    window: when > 0, one more pass on windows of this many pairs, each solved exactly on a
    sparse graph (the window's pairs and each atom's ``neighbours`` nearest atoms of the other
    side); max_seconds: a time budget for everything after the first pass (the first always
    runs in full); blocks not reached keep their pairs, so the result stays a valid bound.
    return_coupling: keep the coupling (pairs i, j and masses) in the result.
    """
    t0 = time.perf_counter()
    xs, ys, aw, bw = validate_inputs(x, y, a, b)
    ints = (("block", block, 2), ("passes", passes, 0), ("window", window, 0))
    for name, v, low in (*ints, ("neighbours", neighbours, 1), ("chunk", chunk, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
    if max_seconds is not None and not (
        isinstance(max_seconds, int | float)
        and max_seconds >= 0
        and not isinstance(max_seconds, bool)
    ):
        raise ValueError(f"max_seconds: expected a number >= 0 or None, got {max_seconds!r}")
    n, d = xs.shape
    m = ys.shape[0]
    kx, ky, method = _keys(xs, ys, aw, bw, potential, fx, fy, chunk)
    coupling, ox, oy = rank_coupling(kx, aw, ky, bw)
    costs = pair_costs(xs, ys, coupling.i, coupling.j)
    history = [float(np.dot(coupling.mass, costs))]
    # pass 0: the rank coupling's own order (its pairs are already sorted), in full
    order: I64 = np.arange(len(coupling.i), dtype=np.int64)
    coupling, costs, blocks = refine(xs, ys, coupling, order, block, 0, costs)
    history.append(float(np.dot(coupling.mass, costs)))
    deadline = math.inf if max_seconds is None else t0 + float(max_seconds)
    rank_x = np.empty(n, dtype=np.int64)
    rank_x[ox] = np.arange(n)
    rank_y = np.empty(m, dtype=np.int64)
    rank_y[oy] = np.arange(m)
    schedule = [(block, 0)] * passes + ([(window, neighbours)] if window > 1 else [])
    done = 0
    for p, (size, k) in enumerate(schedule):
        if time.perf_counter() > deadline:
            break
        first, second = (rank_x, rank_y) if p % 2 == 0 else (rank_y, rank_x)
        ci, cj = (coupling.i, coupling.j) if p % 2 == 0 else (coupling.j, coupling.i)
        order = np.lexsort((second[cj], first[ci])).astype(np.int64)
        offset = size // 2 if p % 2 == 0 else size // 3
        coupling, costs, solved = refine(xs, ys, coupling, order, size, offset, costs, k, deadline)
        blocks += solved
        done += 1
        history.append(float(np.dot(coupling.mass, costs)))
    cost = math.fsum((coupling.mass * costs).tolist())
    rows, cols = coupling.marginals(n, m)
    defect = float(np.abs(rows - aw).sum() + np.abs(cols - bw).sum())
    defect += abs(1.0 - math.fsum(coupling.mass.tolist()))
    value = (cost + _diameter(xs, ys) * defect) * (1.0 + (d + 8) * _EPS)
    return UpperBound(
        value=float(value),
        cost=float(cost),
        method=method,
        seconds=time.perf_counter() - t0,
        blocks=blocks,
        passes=done,
        block=block,
        pairs=len(coupling.i),
        defect=defect,
        history=history,
        coupling=coupling if return_coupling else None,
    )

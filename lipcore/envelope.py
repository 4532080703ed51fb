"""The Lipschitz envelope of a potential over anchor samples (a c-transform, Euclidean cost).

Given the values g(a_i) of a 1-Lipschitz potential g at anchors a_i, the two extremal 1-Lipschitz
functions that agree with g there (McShane and Whitney) are

- on source anchors, the *lower* envelope  f(x) = max_i (g(a_i) - |x - a_i|) <= g, and
- on target anchors, the *upper* envelope  f(x) = min_j (g(a_j) + |x - a_j|) >= g.

Both are exactly 1-Lipschitz whatever the values (a max or min of unit cones), so the certificate
of the envelope is L = 1 with no estimate involved. Since g is high on the source, the lower
envelope keeps g on the source anchors and lowers it everywhere else (most on the target), the
upper one keeps it on the target anchors and raises it elsewhere: on the training samples each
can only improve the Kantorovich-Rubinstein objective. This is the c-transform step of
semi-discrete optimal transport. Where the network under-resolves sharp features (cones at the
tips of many funnels) the envelope of its values over one dense set fits them better; where the
samples are sparse (high dimension) it fits their noise. Which form is kept is decided on the
validation samples only (``one_se_choice``, called by lipcore.estimate.envelop), so the held-out
estimate and the test stay valid.

The gradient is the unit vector towards (lower) or away from (upper) the anchor whose cone is
active. At an anchor itself the cone of that anchor has no gradient; the next best cone, the one
at a positive distance, gives it: the direction of transport there, not a zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .holdout import Z95, holdout_estimate

F64 = NDArray[np.float64]

#: Anchor-distance entries per block of rows (bounded temporaries: 2**21 float64 = 16 MiB).
BLOCK_ENTRIES = 2**21
#: Anchor coordinates kept at most (bytes, float64): bounds the saved potential in high d.
MAX_ANCHOR_BYTES = 32 * 1024**2
SIDES = ("source", "target")
#: Distance work (rows x anchors x d) an envelope kept may cost over all samples: about 30 s of
#: one CPU core at d = 64; larger inputs get fewer anchors.
MAX_WORK = 2**35
#: Anchor counts weighed per side: all, 1/2, ..., 1/2**(PREFIXES - 1) of them.
PREFIXES = 6


class Envelope(nn.Module):
    """f(x) = max_i (v_i - |x - a_i|) (side "source") or min_j (v_j + |x - a_j|) (side
    "target"): a 1-Lipschitz potential defined by its anchors (m, d) and values (m,).
    Takes rows (n, d), returns (n, 1), like the exported network. ``scales`` (d,), ones by
    default: x is divided by them first (a potential fitted to rescaled features, taking the
    raw ones, as lipcore.scaling.fold_scales makes it; 1-Lipschitz in the rescaled space)."""

    lipschitz = 1.0
    anchors: torch.Tensor
    values: torch.Tensor
    scales: torch.Tensor

    def __init__(
        self,
        anchors: torch.Tensor,
        values: torch.Tensor,
        side: str,
        scales: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if side not in SIDES:
            raise ValueError(f"side: expected one of {SIDES}, got {side!r}")
        if anchors.ndim != 2 or values.shape != (anchors.shape[0],) or anchors.shape[0] < 1:
            raise ValueError(
                f"anchors (m, d) and values (m,) with m >= 1 expected, got "
                f"{tuple(anchors.shape)} and {tuple(values.shape)}"
            )
        if scales is None:
            scales = torch.ones(anchors.shape[1], dtype=anchors.dtype, device=anchors.device)
        if scales.shape != (anchors.shape[1],):
            raise ValueError(f"scales: expected ({anchors.shape[1]},), got {tuple(scales.shape)}")
        self.side = side
        self.register_buffer("anchors", anchors.detach().clone())
        self.register_buffer("values", values.detach().clone().to(anchors))
        self.register_buffer("scales", scales.detach().clone().to(anchors))

    @property
    def sign(self) -> float:
        """+1 for the lower envelope (source anchors), -1 for the upper one: f = sign * max_i
        (sign * v_i - |x - a_i|)."""
        return 1.0 if self.side == "source" else -1.0

    def extra_repr(self) -> str:
        m, d = self.anchors.shape
        return f"side={self.side!r}, anchors={m}, d={d}"

    def _scores(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Block by block of the rows x (raw features): the scaled rows, their distances r to
        every anchor and the scores sign * v - r (no gradient), in bounded temporaries."""
        anchors = self.anchors
        x = x / self.scales
        rows = max(1, BLOCK_ENTRIES // int(anchors.shape[0]))
        for i in range(0, int(x.shape[0]), rows):
            xb = x[i : i + rows]
            with torch.no_grad():
                # The direct kernel, not |x|^2 + |a|^2 - 2 x.a: exact distances near an anchor.
                r = torch.cdist(xb, anchors, compute_mode="donot_use_mm_for_euclid_dist")
                score = self.sign * self.values[None, :] - r
            yield xb, r, score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sign
        outs = []
        for xb, r, score in self._scores(x):
            best = score.max(dim=1).values
            if not (torch.is_grad_enabled() and xb.requires_grad):
                outs.append(s * best)
                continue
            with torch.no_grad():
                k = score.masked_fill(r == 0, -torch.inf).argmax(dim=1)
            dist = torch.linalg.vector_norm(xb - self.anchors[k], dim=1)
            # The active cone's slope, the value left as computed over all anchors.
            cone = -dist
            outs.append(s * (best + cone - cone.detach()))
        return torch.cat(outs)[:, None] if outs else x.new_zeros((0, 1))

    @torch.no_grad()
    def prefix_values(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """The envelopes over the first k anchors, for each k of ``sizes``, on the rows x: a
        (len(sizes), n) tensor from one pass over the distances (anchors in random order make
        each prefix a random subset, so one pass weighs several anchor counts)."""
        out = x.new_empty((len(sizes), int(x.shape[0])))
        i = 0
        for xb, _, score in self._scores(x):
            for j, k in enumerate(sizes):
                out[j, i : i + len(xb)] = self.sign * score[:, :k].max(dim=1).values
            i += len(xb)
        return out


@dataclass(frozen=True)
class EnvelopeChoice:
    """Which potential the validation samples preferred and by how much: ``side`` (None: the
    network was kept), the anchors used and the validation objective (sum w f(x) - sum w f(y),
    f scaled to L = 1) of the network and of each envelope tried."""

    side: str | None
    anchors: int
    validation: dict[str, float]

    @property
    def kept(self) -> str:
        """What was kept, for people: "network" or e.g. "source envelope (512)"."""
        return "network" if self.side is None else f"{self.side} envelope ({self.anchors})"

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "anchors": self.anchors, "validation": dict(self.validation)}


def one_se_choice(
    candidates: list[tuple[str, F64, F64]], wx: F64, wy: F64
) -> tuple[int, dict[str, float]]:
    """The candidate to keep, and each one's validation objective sum wx f(x) - sum wy f(y).

    ``candidates``: (name, f on the validation source rows, f on the validation target rows),
    the most conservative first (the network, then envelopes from the most anchors to the
    fewest). The one-standard-error rule: the first candidate whose objective is within one
    standard error of the best one's, the error being that of their paired difference on the
    same rows. A candidate that wins by less than the noise of the validation samples is not
    taken over a more conservative one (and the choice overfits those samples less)."""
    scores = {name: float(wx @ fx - wy @ fy) for name, fx, fy in candidates}
    best = max(range(len(candidates)), key=lambda i: scores[candidates[i][0]])
    _, bx, by = candidates[best]
    for i, (_, fx, fy) in enumerate(candidates):
        gap = holdout_estimate(bx - fx, wx, by - fy, wy)
        if gap.value <= (gap.ci95[1] - gap.value) / Z95:
            return i, scores
    return best, scores  # not reached: the best is within 0 of itself


def anchor_count(requested: int, d: int, available: int, rows: int = 0) -> int:
    """How many anchors to use: ``requested``, at most ``MAX_ANCHOR_BYTES`` of float64 rows of
    dimension d, at most the rows available, and at most ``MAX_WORK`` / (rows * d) when the
    envelope is to be evaluated on ``rows`` samples (0: no bound)."""
    d = max(1, int(d))
    by_work = MAX_WORK // (int(rows) * d) if rows > 0 else int(requested)
    return max(0, min(int(requested), MAX_ANCHOR_BYTES // (8 * d), int(available), by_work))


def pick_anchors(
    rows: np.ndarray, weights: F64, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` of ``rows`` (indices) drawn uniformly without replacement among those with a
    positive weight (all of them when there are no more), in random order: every prefix is a
    uniform subset too (``Envelope.prefix_values``)."""
    live = rows[weights > 0]
    return rng.permutation(live)[: max(0, int(count))]


def prefix_sizes(count: int) -> list[int]:
    """The anchor counts weighed: count, count/2, ..., count/32 (distinct, at least 1),
    ascending. Fewer anchors lower (raise) the envelope away from them: a trade between the
    two sets that the validation samples settle."""
    return sorted({max(1, count >> k) for k in range(PREFIXES)}) if count > 0 else []


def envelope_of(points: np.ndarray, values: F64, side: str) -> Envelope:
    """The float64 envelope with anchors ``points`` (m, d) and values (m,) on the CPU."""
    return Envelope(
        torch.from_numpy(np.ascontiguousarray(points, dtype=np.float64)),
        torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)),
        side,
    )

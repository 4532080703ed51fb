"""The estimate's picture: training curve, potential histograms, a 2-D heat map, the numbers.

:func:`render_png` draws from plain arrays (no service, no torch), so it is testable on its own;
:func:`potential_views` evaluates a potential on (subsampled) data to fill those arrays. The
values drawn are those ``/evaluate`` serves: g = (f - c) / L, centred and 1-Lipschitz.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SOURCE_COLOR = "#1f77b4"
TOP_FEATURES = 10  # bars in the features panel
TARGET_COLOR = "#d62728"
SCATTER_MAX = 2000  # points per set drawn on the heat map (more only hides the colours)
EVAL_CHUNK = 65_536  # rows per chunk when evaluating the potential


@dataclass
class ReportInputs:
    """Everything the picture shows, as plain data."""

    title: str
    numbers: list[tuple[str, str]]
    history: np.ndarray | None = None  # (k, 2): step, objective
    g_source: np.ndarray | None = None  # g on (a subsample of) the source
    g_target: np.ndarray | None = None
    w_source: np.ndarray | None = None  # weights of those samples (None: uniform)
    w_target: np.ndarray | None = None
    grid_x: np.ndarray | None = None  # d == 2 only: axes of the heat map ...
    grid_y: np.ndarray | None = None
    grid_g: np.ndarray | None = None  # ... and g on it, shape (len(grid_y), len(grid_x))
    points_source: np.ndarray | None = None  # (k, 2) samples drawn on the heat map
    points_target: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)  # result["features"]


def _fmt(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def headline(status: str, result: dict[str, Any] | None, fallback: str) -> str:
    """The picture's title: the verdict's sentence when there is one (the answer first)."""
    verdict = (result or {}).get("verdict")
    if status == "succeeded" and isinstance(verdict, dict) and verdict.get("summary"):
        return str(verdict["summary"])
    return fallback


def summary_numbers(
    status: str, result: dict[str, Any] | None, error: Any = None
) -> list[tuple[str, str]]:
    """The rows of the numbers panel for a job's status, result (contract) and error."""
    rows: list[tuple[str, str]] = [("status", status)]
    if result:
        verdict, distance = result.get("verdict"), result.get("distance")
        if isinstance(verdict, dict):
            rows.append(
                (
                    "differ? (p-value)",
                    f"{verdict.get('differ')} ({_fmt(verdict.get('p_value'), 3)})",
                )
            )
        if isinstance(distance, dict):
            ci = distance.get("ci95") or [None, None]
            rows.append(
                (
                    "distance (95% CI)",
                    f"{_fmt(distance.get('value'), 4)} [{_fmt(ci[0], 4)}, {_fmt(ci[1], 4)}]",
                )
            )
        rows.append(("method", _fmt(result.get("method"))))
        rows.append(("w1 (these samples)", _fmt(result.get("w1"))))
        if result.get("lower_bound") is not None:
            rows.append(("lower bound (certified)", _fmt(result.get("lower_bound"))))
            rows.append(("Lipschitz constant L", _fmt(result.get("lipschitz_constant"))))
        hold = result.get("holdout")
        if isinstance(hold, dict):
            ci = hold.get("ci95") or [None, None]
            rows.append(
                (
                    "holdout (95% CI)",
                    f"{_fmt(hold.get('value'), 4)} [{_fmt(ci[0], 4)}, {_fmt(ci[1], 4)}]",
                )
            )
        ex = result.get("exact")
        if isinstance(ex, dict):
            rows.append((f"exact ({ex.get('solver')})", _fmt(ex.get("value"))))
        if result.get("relative_gap") is not None:
            rows.append(("relative gap", f"{100 * float(result['relative_gap']):.3g} %"))
        diag = result.get("diagnostics")
        if isinstance(diag, dict) and isinstance(diag.get("grad_norm"), dict):
            gn = diag["grad_norm"]
            rows.append(
                (
                    "|grad f| q05/q50/q95",
                    " / ".join(_fmt(gn.get(k), 3) for k in ("q05", "q50", "q95")),
                )
            )
        rows.append(("steps", _fmt(result.get("steps"))))
        rows.append(("device", _fmt(result.get("device"))))
        if result.get("seconds") is not None:
            rows.append(("seconds", f"{float(result['seconds']):.3g}"))
    if error:
        detail = error.get("detail") or error.get("title") if isinstance(error, dict) else error
        rows.append(("error", str(detail)[:120]))
    return rows


def render_png(inp: ReportInputs, dpi: int = 100) -> bytes:
    """Draw the report as PNG bytes (matplotlib's Agg canvas; no pyplot, so thread-safe)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = ["numbers"]
    if inp.history is not None and len(inp.history):
        panels.insert(0, "objective")
    if inp.g_source is not None and inp.g_target is not None:
        panels.append("histograms")
    if inp.grid_g is not None:
        panels.append("heatmap")
    elif inp.features:  # d != 2: where the picture has room, which features moved
        panels.append("features")
    n = len(panels)
    cols = 1 if n == 1 else 2
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(6.5 * cols, 4.5 * rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(inp.title)
    for i, kind in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        getattr(_Panels, kind)(ax, inp)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class _Panels:
    @staticmethod
    def objective(ax: Any, inp: ReportInputs) -> None:
        h = np.asarray(inp.history, dtype=float)
        ax.plot(h[:, 0], h[:, 1], color="black", lw=1.2)
        ax.set_xlabel("training step")
        ax.set_ylabel("objective  E_a f(x) - E_b f(y)")
        ax.set_title("Training objective")
        ax.grid(alpha=0.3)

    @staticmethod
    def numbers(ax: Any, inp: ReportInputs) -> None:
        ax.axis("off")
        ax.set_title("Result")
        lines = inp.numbers + [("note", n) for n in inp.notes]
        for k, (label, value) in enumerate(lines):
            y = 0.95 - k * 0.075
            ax.text(0.0, y, label, transform=ax.transAxes, fontsize=10, va="top")
            ax.text(
                0.48, y, value, transform=ax.transAxes, fontsize=10, va="top", family="monospace"
            )

    @staticmethod
    def histograms(ax: Any, inp: ReportInputs) -> None:
        gs, gt = np.asarray(inp.g_source, float), np.asarray(inp.g_target, float)
        both = np.concatenate([gs, gt])
        lo, hi = float(both.min()), float(both.max())
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 61)
        kw = {"bins": bins, "alpha": 0.55, "density": True}
        ax.hist(gs, weights=inp.w_source, color=SOURCE_COLOR, label=f"source (n={len(gs)})", **kw)
        ax.hist(gt, weights=inp.w_target, color=TARGET_COLOR, label=f"target (n={len(gt)})", **kw)
        ax.set_xlabel("g = (f - c) / L")
        ax.set_ylabel("density")
        ax.set_title("Potential on both sets (high on the source)")
        ax.legend(loc="best", fontsize=9)

    @staticmethod
    def features(ax: Any, inp: ReportInputs) -> None:
        top = inp.features[:TOP_FEATURES][::-1]
        names = [str(f.get("name")) for f in top]
        shares = [f.get("attribution") for f in top]
        if all(s is not None for s in shares):
            ax.barh(names, shares, color=TARGET_COLOR)
            ax.set_xlabel("attribution: share of the potential's squared gradient")
        else:  # method exact: no potential, the marginals only
            ax.barh(names, [float(f.get("marginal_w1") or 0.0) for f in top], color=SOURCE_COLOR)
            ax.set_xlabel("marginal W1 of the feature")
        ax.set_title(f"Where they differ: top {len(top)} features")
        ax.grid(alpha=0.3, axis="x")

    @staticmethod
    def heatmap(ax: Any, inp: ReportInputs) -> None:
        mesh = ax.pcolormesh(inp.grid_x, inp.grid_y, inp.grid_g, cmap="viridis", shading="auto")
        ax.figure.colorbar(mesh, ax=ax, label="g")
        for pts, color, label in (
            (inp.points_source, SOURCE_COLOR, "source"),
            (inp.points_target, TARGET_COLOR, "target"),
        ):
            if pts is not None and len(pts):
                ax.scatter(
                    pts[:, 0], pts[:, 1], s=5, c=color, alpha=0.6, label=label, edgecolors="none"
                )
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_title("Potential g with the two samples")
        ax.legend(loc="upper right", fontsize=9, markerscale=3)


def subsample(
    samples: np.ndarray, weights: np.ndarray | None, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """At most ``k`` rows (uniformly, without replacement, sorted so mmap reads stay sequential)."""
    n = samples.shape[0]
    if n <= k:
        return np.asarray(samples), None if weights is None else np.asarray(weights)
    idx = np.sort(rng.choice(n, size=k, replace=False))
    return np.asarray(samples[idx]), None if weights is None else np.asarray(weights)[idx]


def potential_views(
    inp: ReportInputs,
    model: Any,
    center: float,
    lipschitz: float,
    x: np.ndarray,
    a: np.ndarray | None,
    y: np.ndarray,
    b: np.ndarray | None,
    *,
    max_points: int = 20_000,
    grid: int = 160,
    seed: int = 0,
) -> ReportInputs:
    """Fill ``inp`` with g = (f - c) / L on seeded subsamples and, for d = 2, on a grid."""
    import lipcore  # here, not at the top: render_png needs no torch

    rng = np.random.default_rng(seed)
    scale = 1.0 / lipschitz if lipschitz and lipschitz > 0 else 1.0

    def g(points: np.ndarray) -> np.ndarray:
        return (lipcore.evaluate(model, points, chunk=EVAL_CHUNK) - center) * scale

    xs, ws = subsample(x, a, max_points, rng)
    ys, wt = subsample(y, b, max_points, rng)
    inp.g_source = g(xs)
    inp.g_target = g(ys)
    inp.w_source, inp.w_target = ws, wt
    if len(xs) < x.shape[0] or len(ys) < y.shape[0]:
        inp.notes.append(f"histograms on a seeded subsample of <= {max_points} per set")
    if x.shape[1] == 2:
        pts = np.concatenate([xs, ys]).astype(np.float64)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        span = np.maximum(hi - lo, 1e-9)
        lo, hi = lo - 0.08 * span, hi + 0.08 * span
        gx = np.linspace(lo[0], hi[0], grid)
        gy = np.linspace(lo[1], hi[1], grid)
        mx, my = np.meshgrid(gx, gy)
        flat = np.stack([mx.ravel(), my.ravel()], axis=1)
        inp.grid_x, inp.grid_y = gx, gy
        inp.grid_g = g(flat).reshape(grid, grid)
        inp.points_source = xs[rng.permutation(len(xs))[:SCATTER_MAX]]
        inp.points_target = ys[rng.permutation(len(ys))[:SCATTER_MAX]]
    return inp

"""Benchmark problems: low-dimensional pairs where the empirical W1's noise floor is small.

Each case is (name, x, y, a, b). A potential is judged against the exact empirical W1 only where
sampling noise is a small part of it (big shifts, mixtures, scaled data, d <= 8): from d ~ 4 on, a
smooth potential does not (and should not) fit the noise floor of the empirical W1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Case = tuple[str, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


def _weights(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.gamma(2.0, size=n)  # moderately uneven, all positive
    return w / w.sum()


def gauss_shift_2d(rng: np.random.Generator) -> Case:
    x = rng.normal(size=(2000, 2))
    y = rng.normal(size=(2000, 2)) + [2.0, 0.0]
    return "gauss-shift d=2 n=m=2000", x, y, None, None


def gauss_scale_2d(rng: np.random.Generator) -> Case:
    x = rng.normal(size=(3000, 2))
    y = 2.5 * rng.normal(size=(2000, 2)) + [1.0, 1.0]
    return "gauss vs wide gauss d=2 n=3000 m=2000", x, y, None, None


def mixture_2d_weighted(rng: np.random.Generator) -> Case:
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    x = centres[rng.integers(0, 3, size=2500)] + 0.7 * rng.normal(size=(2500, 2))
    y = 1.5 * rng.normal(size=(3000, 2))
    return "mixture vs gauss d=2 weighted n=2500 m=3000", x, y, _weights(rng, 2500), None


def ring_3d(rng: np.random.Generator) -> Case:
    t = rng.uniform(0, 2 * np.pi, size=2000)
    x = np.c_[5 * np.cos(t), 5 * np.sin(t), 0.3 * rng.normal(size=2000)]
    y = rng.normal(size=(1500, 3))
    return "ring vs gauss d=3 n=2000 m=1500", x, y, None, None


def scaled_3d_weighted(rng: np.random.Generator) -> Case:
    x = 1e3 * rng.normal(size=(1800, 3))
    y = 1e3 * (rng.normal(size=(2200, 3)) * [1.0, 2.0, 0.5] + [3.0, 0.0, 0.0])
    return (
        "anisotropic x1e3 d=3 weighted n=1800 m=2200",
        x,
        y,
        _weights(rng, 1800),
        _weights(rng, 2200),
    )


def small_scale_1d(rng: np.random.Generator) -> Case:
    x = 1e-3 * rng.standard_t(4, size=(4000, 1))
    y = 1e-3 * (rng.exponential(size=(3000, 1)) + 1.0)
    return "t vs exp x1e-3 d=1 n=4000 m=3000", x, y, None, None


def shift_5d(rng: np.random.Generator) -> Case:
    x = rng.normal(size=(2000, 5))
    y = rng.normal(size=(1600, 5)) + 6.0 * np.eye(5)[0]
    return "gauss-shift(6) d=5 n=2000 m=1600", x, y, None, None


def mixture_5d_weighted(rng: np.random.Generator) -> Case:
    x = rng.normal(size=(2000, 5)) + np.where(rng.random((2000, 1)) < 0.5, -5.0, 5.0) * np.eye(5)[1]
    y = rng.normal(size=(2000, 5)) * 0.5
    return "two-mode vs narrow d=5 weighted n=m=2000", x, y, None, _weights(rng, 2000)


def shift_8d(rng: np.random.Generator) -> Case:
    x = rng.normal(size=(1500, 8))
    y = rng.normal(size=(1200, 8)) + 10.0 / np.sqrt(8)
    return "gauss-shift(10) d=8 n=1500 m=1200", x, y, None, None


def reweighted_2d(rng: np.random.Generator) -> Case:
    x = rng.uniform(-3, 3, size=(2000, 2))
    a = np.exp(-0.5 * ((x - [1.5, 0.0]) ** 2).sum(1))
    b = np.exp(-0.5 * ((x + [1.5, 0.0]) ** 2).sum(1))
    return "same points, two weightings d=2 n=m=2000", x, x.copy(), a / a.sum(), b / b.sum()


CASES: list[Callable[[np.random.Generator], Case]] = [
    gauss_shift_2d,
    gauss_scale_2d,
    mixture_2d_weighted,
    ring_3d,
    scaled_3d_weighted,
    small_scale_1d,
    shift_5d,
    mixture_5d_weighted,
    shift_8d,
    reweighted_2d,
]


def make_cases(seed: int = 0, only: list[int] | None = None) -> list[Case]:
    out = []
    for i, make in enumerate(CASES):
        if only is None or i in only:
            out.append(make(np.random.default_rng(seed + i)))
    return out

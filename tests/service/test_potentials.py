"""The API's cache of loaded potentials and the centred, scaled evaluation it serves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lipcore.layers import MaxMin
from lipcore.potential import save_potential
from service.potentials import PotentialCache, evaluate


def write(path: Path, scale: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), MaxMin(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.mul_(scale)
    save_potential(path, model, {"lipschitz_constant": 1.0})


def test_cache_reuses_reloads_on_change_and_evicts(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write(a, 1.0)
    write(b, 1.0)
    cache = PotentialCache(size=1)
    first = cache.get(a)
    assert cache.get(a) is first
    assert next(first.parameters()).dtype == torch.float64
    cache.get(b)  # evicts a
    assert cache.get(a) is not first
    again = cache.get(a)
    write(a, 2.0)
    os.utime(a, ns=(1, 1))  # a different mtime, as a rewritten file has
    assert cache.get(a) is not again
    cache.forget(a)
    assert all(key[0] != str(a) for key in cache._items)


def test_evaluate_centres_scales_and_differentiates(tmp_path: Path) -> None:
    path = tmp_path / "p.safetensors"
    write(path, 3.0)
    model = PotentialCache().get(path)
    pts = np.random.default_rng(0).normal(size=(7, 2))
    raw, _ = evaluate(model, pts, 0.0, 1.0, gradient=False)
    values, grads = evaluate(model, pts, center=0.5, lipschitz=4.0, gradient=True)
    assert values == pytest.approx((raw - 0.5) / 4.0, abs=1e-12)
    eps = 1e-6  # central differences of g along the first axis
    hi, _ = evaluate(model, pts + [eps, 0], 0.5, 4.0, gradient=False)
    lo, _ = evaluate(model, pts - [eps, 0], 0.5, 4.0, gradient=False)
    assert grads[:, 0] == pytest.approx((hi - lo) / (2 * eps), abs=1e-6)

"""Fitted potentials served by the API: a small LRU of loaded networks and their evaluation.

/evaluate answers with g = (f - c) / L, where f is the exported network, L its certified
Lipschitz constant and c its weighted centre on both sample sets: g is centred and 1-Lipschitz.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from torch import nn

import lipcore

EVAL_CHUNK = 65_536


class PotentialCache:
    """Loaded potentials (float64) keyed by file path, size and mtime; thread-safe."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, int, int], nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> nn.Module:
        """The network stored at ``path``, loaded once and kept while recently used."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            model = self._items.get(key)
            if model is not None:
                self._items.move_to_end(key)
                return model
        model = lipcore.load_potential(path).double().eval().requires_grad_(False)
        with self._lock:
            self._items[key] = model
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model

    def forget(self, path: Path) -> None:
        """Drop every cached version of ``path`` (its job was deleted)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == str(path)]:
                del self._items[key]


def evaluate(
    model: nn.Module, points: np.ndarray, center: float, lipschitz: float, gradient: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Values (k,) of g = (f - center) / lipschitz at ``points`` (k, d), and (k, d) gradients."""
    if gradient:
        f, g = lipcore.evaluate(model, points, chunk=EVAL_CHUNK, grad=True)
        return (f - center) / lipschitz, g / lipschitz
    f = lipcore.evaluate(model, points, chunk=EVAL_CHUNK)
    return (f - center) / lipschitz, None

"""lipcore: certified Wasserstein-1 estimates from 1-Lipschitz neural potentials.

The public API is exactly what this module exports; everything else is internal.
"""

from .config import EstimatorConfig
from .errors import Cancelled, ExactNotConverged, ExactTooLarge
from .estimate import Estimate, estimate_w1
from .exact import exact_w1
from .holdout import Holdout
from .potential import load_potential, read_potential_metadata
from .train import Progress

__all__ = [
    "Cancelled",
    "Estimate",
    "EstimatorConfig",
    "ExactNotConverged",
    "ExactTooLarge",
    "Holdout",
    "Progress",
    "estimate_w1",
    "exact_w1",
    "load_potential",
    "read_potential_metadata",
]

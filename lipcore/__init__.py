"""lipcore: certified Wasserstein-1 estimates from 1-Lipschitz neural potentials.

The public API is exactly what this module exports; everything else is internal. The stages of
estimate_w1 (prepare, fit, certify, hold_out) are in lipcore.estimate for callers that need one.
"""

from .accel import default_device
from .bracket import UpperBound, bracket_width, upper_bound
from .certify import evaluate
from .config import EstimatorConfig
from .errors import Cancelled, ConfigError, ExactNotConverged, ExactTooLarge
from .estimate import Estimate, estimate_w1
from .exact import exact_w1
from .features import Feature, feature_table
from .holdout import Holdout
from .potential import input_dim, load_potential, read_potential_metadata
from .train import Progress
from .twosample import TwoSampleTest, exact_permutation_test, permutation_test
from .validation import normalised_weights

__all__ = [
    "Cancelled",
    "ConfigError",
    "Estimate",
    "EstimatorConfig",
    "ExactNotConverged",
    "ExactTooLarge",
    "Feature",
    "Holdout",
    "Progress",
    "TwoSampleTest",
    "UpperBound",
    "bracket_width",
    "default_device",
    "estimate_w1",
    "evaluate",
    "exact_permutation_test",
    "exact_w1",
    "feature_table",
    "input_dim",
    "load_potential",
    "normalised_weights",
    "permutation_test",
    "read_potential_metadata",
    "upper_bound",
]

import pytest
import torch

from lipcore import EstimatorConfig

# The tests' networks are tiny: one thread avoids OpenMP barrier stalls on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def tiny() -> EstimatorConfig:
    """A config small enough for a test to train in well under a second."""
    return EstimatorConfig(width=16, depth=2, steps=40, batch_size=64, min_steps=0, patience=0)

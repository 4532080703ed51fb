"""Every bad input is a ValueError naming the problem, in both entry points."""

import numpy as np
import pytest
import torch

from lipcore import EstimatorConfig, estimate_w1, exact_w1

X = np.random.default_rng(0).normal(size=(10, 2))
Y = np.random.default_rng(1).normal(size=(8, 2))
U = np.full(10, 0.1)

BAD = {
    "empty x": (np.zeros((0, 2)), Y, None, None, "empty"),
    "empty y": (X, np.zeros((0, 2)), None, None, "empty"),
    "nan": (np.where(np.arange(20).reshape(10, 2) == 3, np.nan, X), Y, None, None, "NaN"),
    "inf": (X, np.where(np.arange(16).reshape(8, 2) == 5, np.inf, Y), None, None, "infinite"),
    "mismatched d": (X, np.zeros((8, 3)), None, None, "mismatched dimensions"),
    "d zero": (np.zeros((10, 0)), np.zeros((8, 0)), None, None, "d = 0"),
    "3-d": (np.zeros((2, 5, 2)), Y, None, None, "2-D"),
    "scalar": (np.float64(1.0), Y, None, None, "2-D"),
    "strings": (np.array([["a", "b"]]), Y, None, None, "numeric"),
    "negative weight": (X, Y, np.r_[-0.1, np.full(9, 1.1 / 9)], None, "negative"),
    "not normalised": (X, Y, np.full(10, 0.2), None, "sum to 1"),
    "all zero": (X, Y, np.zeros(10), None, "sum to 1"),
    "wrong length": (X, Y, np.full(5, 0.2), None, "5 weights for 10 samples"),
    "nan weight": (X, Y, np.r_[np.nan, U[1:]], None, "NaN"),
    "2-d weights": (X, Y, np.full((5, 2), 0.1), None, "1-D"),
    "bad b": (X, Y, None, np.full(8, 1.0), "b: weights must sum to 1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_exact_rejects(case):
    x, y, a, b, msg = BAD[case]
    with pytest.raises(ValueError, match=msg):
        exact_w1(x, y, a, b)


@pytest.mark.parametrize("case", list(BAD))
def test_estimate_rejects(case, tiny):
    x, y, a, b, msg = BAD[case]
    with pytest.raises(ValueError, match=msg):
        estimate_w1(x, y, a, b, config=tiny)


def test_weights_within_tolerance_are_accepted_and_renormalised(tiny):
    a = np.full(10, 0.1) * (1 + 5e-7)
    assert exact_w1(X, Y, a) == pytest.approx(exact_w1(X, Y), rel=1e-9)
    est = estimate_w1(X, Y, a, config=tiny, holdout=0)
    assert est.lower_bound <= exact_w1(X, Y) + 1e-9


def test_torch_inputs_and_column_vector_weights(tiny):
    est = estimate_w1(
        torch.from_numpy(X).float(), torch.from_numpy(Y), torch.full((10, 1), 0.1), config=tiny
    )
    assert np.isfinite(est.lower_bound)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"holdout": 1.0}, "holdout"),
        ({"holdout": -0.1}, "holdout"),
        ({"holdout": "0.2"}, "holdout"),
        ({"seed": 1.5}, "seed"),
        ({"seed": -1}, "seed"),
        ({"callback": 3}, "callback"),
        ({"config": "big"}, "config"),
        ({"config": {"widht": 8}}, "widht"),
        ({"device": "nonsense"}, "device"),
    ],
)
def test_estimate_rejects_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        estimate_w1(X, Y, **kwargs)


def test_cuda_request_without_cuda_is_a_value_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="CUDA"):
        estimate_w1(X, Y, config=EstimatorConfig(steps=1), device="cuda")


def test_normalised_weights_is_the_one_normalisation():
    from lipcore import normalised_weights
    from lipcore.validation import as_weights

    assert np.array_equal(normalised_weights(None, 4), np.full(4, 0.25))
    w = normalised_weights(np.array([[1.0], [3.0]], dtype=np.float32), 2)
    assert w.dtype == np.float64 and np.array_equal(w, [0.25, 0.75])
    a = np.full(10, 0.1) * (1 + 5e-7)
    assert np.array_equal(as_weights(a, 10, "a"), normalised_weights(a, 10))
    with pytest.raises(ValueError, match="3 weights for 2 samples"):
        normalised_weights([1, 2, 3], 2)


def test_default_device_is_what_none_resolves_to():
    from lipcore import default_device
    from lipcore.accel import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device() == torch.device(expected)
    assert resolve_device(None).type == expected

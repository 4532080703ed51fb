import json

import pytest

from lipcore import EstimatorConfig


def test_round_trip_through_json():
    c = EstimatorConfig(width=32, depth=2, activation="fullsort", steps=10, lr=1e-2)
    d = json.loads(json.dumps(c.to_dict()))
    assert EstimatorConfig.from_dict(d) == c
    assert EstimatorConfig.from_dict({}) == EstimatorConfig()
    assert EstimatorConfig.from_dict(None) == EstimatorConfig()


def test_partial_dict_and_int_for_float():
    c = EstimatorConfig.from_dict({"lr": 1, "steps": 5})
    assert c.lr == 1.0 and isinstance(c.lr, float) and c.steps == 5


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"\['colour', 'widht'\]"):
        EstimatorConfig.from_dict({"widht": 3, "colour": "red", "steps": 3})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 0),
        ("width", 7),  # odd width with maxmin
        ("width", 8.0),
        ("depth", 0),
        ("steps", -1),
        ("steps", True),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("lr", "fast"),
        ("lr_final", 2.0),
        ("activation", "relu"),
        ("ortho_iters", 0),
        ("smoothing", 0.0),
        ("tolerance", -1.0),
    ],
)
def test_invalid_values_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        EstimatorConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        EstimatorConfig.from_dict({field: value})


def test_frozen():
    with pytest.raises(AttributeError):
        EstimatorConfig().width = 3  # type: ignore[misc]

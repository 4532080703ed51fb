import json
import pickle

import pytest

from lipcore import ConfigError, EstimatorConfig


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


@pytest.mark.parametrize(
    ("given", "field", "message"),
    [
        ({"steps": 0}, "steps", "config.steps: must be >= 1, got 0"),
        ({"width": 7}, "width", "config.width: must be even for activation 'maxmin', got 7"),
        ({"lr": "fast"}, "lr", "config.lr: expected a finite number, got 'fast'"),
        ({"precision": "fp8"}, "precision", "config.precision: must be one of"),
        ({"activation": ["maxmin"]}, "activation", "config.activation: must be one of"),
        ({"compile": 1}, "compile", "config.compile: expected true or false, got 1"),
        ({"widht": 3}, "config", "config: unknown keys ['widht']"),
    ],
)
def test_config_error_names_its_field(given, field, message):
    with pytest.raises(ConfigError) as info:
        EstimatorConfig.from_dict(given)
    assert info.value.field == field
    assert str(info.value).startswith(message)  # the message is what it always was
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working


def test_config_error_for_the_whole_config_and_across_processes():
    with pytest.raises(ConfigError) as info:
        EstimatorConfig.from_dict([1, 2])  # type: ignore[arg-type]
    assert info.value.field == "config" and str(info.value) == "config: expected a dict, got list"
    copy = pickle.loads(pickle.dumps(ConfigError("steps", "config.steps: must be >= 1, got 0")))
    assert isinstance(copy, ConfigError) and copy.field == "steps"
    assert str(copy) == "config.steps: must be >= 1, got 0"

"""Training cycles (issue 15): steps beyond the first cycle only while the objective climbs."""

from __future__ import annotations

import pytest
import torch

from lipcore import ConfigError, EstimatorConfig, Progress
from lipcore.network import LipschitzMLP
from lipcore.train import TrainResult, Validation, train


def _run(config: EstimatorConfig, shift: float) -> tuple[TrainResult, list[int], LipschitzMLP]:
    """Trains a small network on a 2-D shift, with a validation part; returns the result, the
    totals announced by the progress reports and the network."""
    g = torch.Generator().manual_seed(0)
    zx = torch.randn(400, 2, generator=g)
    zy = torch.randn(400, 2, generator=g) + torch.tensor([shift, 0.0])
    vx = torch.randn(200, 2, generator=g)
    vy = torch.randn(200, 2, generator=g) + torch.tensor([shift, 0.0])
    w, v = torch.full((400,), 1 / 400), torch.full((200,), 1 / 200)
    net = LipschitzMLP(2, config, torch.Generator().manual_seed(1))
    totals: list[int] = []

    def record(p: Progress) -> None:
        totals.append(p.total_steps)

    res = train(
        net, zx, w, zy, w, config, torch.Generator().manual_seed(2),
        callback=record, validation=Validation(vx, v, vy, v),
    )  # fmt: skip
    return res, totals, net


# A slow learner (tiny learning rate) on a big shift: still climbing at the end of 60 steps.
SLOW = {"width": 8, "depth": 1, "steps": 150, "cycle_steps": 60, "batch_size": 64, "lr": 1e-3}
SLOW["min_steps"] = 0


def test_a_cycle_that_ends_climbing_is_extended_up_to_steps() -> None:
    res, totals, _ = _run(EstimatorConfig(**SLOW, patience=50), shift=6.0)
    assert res.steps == 150  # 60 + 60 + the 30 left of steps
    assert totals[0] == 60 and totals[-1] == 150
    one, _, _ = _run(EstimatorConfig(**{**SLOW, "steps": 60}, patience=50), shift=6.0)
    assert one.steps == 60
    assert res.validation is not None and one.validation is not None
    assert res.validation > one.validation


@pytest.mark.parametrize(
    ("knobs", "steps"), [({"patience": 0}, 150), ({"patience": 50, "extend_gain": 1.0}, 60)]
)
def test_one_cycle_without_the_stopping_rule_or_the_gain(
    knobs: dict[str, int | float], steps: int
) -> None:
    """Patience 0: one cycle of all the steps; a gain never reached: the first cycle only."""
    res, totals, _ = _run(EstimatorConfig(**{**SLOW, **knobs}), shift=6.0)
    assert res.steps == steps and set(totals) == {steps}


def test_a_run_that_stops_in_its_first_cycle_is_unchanged() -> None:
    """No signal to learn (same distribution): the stopping rule ends it before the cycle's end,
    and the extensions change nothing, to the bit."""
    fast = {**SLOW, "lr": 1e-2, "cycle_steps": 400, "patience": 30}
    a, _, net_a = _run(EstimatorConfig(**{**fast, "steps": 400}), shift=0.0)
    b, _, net_b = _run(EstimatorConfig(**{**fast, "steps": 1600}), shift=0.0)
    assert a.steps < 400 and a.steps == b.steps and a.validation == b.validation
    for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_config_checks_the_knobs() -> None:
    with pytest.raises(ConfigError) as e:
        EstimatorConfig(cycle_steps=0)
    assert e.value.field == "cycle_steps"
    with pytest.raises(ConfigError) as e:
        EstimatorConfig(extend_gain=-0.1)
    assert e.value.field == "extend_gain"
    assert EstimatorConfig.from_dict({"extend_gain": 0}).extend_gain == 0.0

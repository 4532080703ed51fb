import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lipcore import Cancelled, Estimate, EstimatorConfig, Holdout, Progress, estimate_w1, exact_w1
from lipcore.certify import lipschitz_constant


def _data(seed=0, n=300, m=200, d=2, shift=1.5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d))
    y[:, 0] += shift
    return x, y


def test_result_fields_and_json(tiny):
    x, y = _data()
    est = estimate_w1(x, y, config=tiny, seed=3)
    assert isinstance(est, Estimate)
    assert est.device == "cpu" and est.steps == tiny.steps and est.seconds > 0
    assert est.config == tiny
    assert isinstance(est.holdout, Holdout)
    assert (est.holdout.n_source, est.holdout.n_target) == (60, 40)
    lo, hi = est.holdout.ci95
    assert lo < est.holdout.value < hi
    assert 0 < est.lower_bound <= exact_w1(x, y)
    # The certified bracket of the empirical W1, and the per-feature table.
    assert est.upper_bound is not None and exact_w1(x, y) <= est.upper_bound.value
    assert est.bracket_width == pytest.approx(1 - est.lower_bound / est.upper_bound.value)
    assert [f.name for f in sorted(est.features, key=lambda f: f.index)] == ["x0", "x1"]
    assert sum(f.attribution or 0.0 for f in est.features) == pytest.approx(1.0)
    assert set(est.grad_norm) == {"q05", "q50", "q95"}
    assert 0 < est.grad_norm["q05"] <= est.grad_norm["q50"] <= est.grad_norm["q95"] <= 1 + 1e-9
    assert est.history and est.history[-1][0] == est.steps
    d = json.loads(json.dumps(est.to_dict()))
    assert d["lower_bound"] == est.lower_bound
    assert d["holdout"]["ci95"] == [lo, hi]
    assert d["config"] == tiny.to_dict()
    assert set(d) == {
        "test", "features", "upper_bound", "bracket_width", "lower_bound", "lipschitz_constant",
        "center", "holdout", "objective", "steps",
        "seconds", "device", "grad_norm", "envelope", "config",
    }  # fmt: skip


def test_potential_is_plain_certified_and_high_on_source(tiny):
    x, y = _data()
    est = estimate_w1(x, y, config=tiny, holdout=0)
    assert est.holdout is None
    pot = est.potential
    assert isinstance(pot, nn.Sequential)
    assert lipschitz_constant(pot) == pytest.approx(est.lipschitz_constant, rel=1e-12)
    with torch.no_grad():
        fx = pot(torch.from_numpy(x)).numpy()[:, 0]
        fy = pot(torch.from_numpy(y)).numpy()[:, 0]
    assert fx.mean() > fy.mean()  # high on the source
    assert (fx.mean() - fy.mean()) / est.lipschitz_constant == pytest.approx(
        est.lower_bound, rel=1e-9
    )
    # the weighted centre of the raw potential over all samples, from the same evaluation
    assert est.center == pytest.approx((fx.mean() + fy.mean()) / 2, rel=1e-12, abs=1e-12)
    assert est.to_dict()["center"] == est.center


def test_same_seed_same_result_other_seed_other_result(tiny):
    x, y = _data()
    r1 = estimate_w1(x, y, config=tiny, seed=5)
    r2 = estimate_w1(x, y, config=tiny, seed=5)
    r3 = estimate_w1(x, y, config=tiny, seed=6)
    assert r1.lower_bound == r2.lower_bound
    assert r1.holdout == r2.holdout
    assert r1.lower_bound != r3.lower_bound


def test_minibatch_and_weighted_sampling_paths_run(tiny):
    x, y = _data(n=500, m=400)  # larger than tiny.batch_size: the sampling path
    b = np.random.default_rng(0).random(400)
    est = estimate_w1(x, y, None, b / b.sum(), config=tiny)
    assert 0 < est.lower_bound <= exact_w1(x, y, None, b / b.sum())


def test_progress_callback_reports_and_can_cancel(tiny):
    x, y = _data()
    seen: list[Progress] = []
    estimate_w1(x, y, config=tiny, callback=seen.append)
    training = [p for p in seen if p.phase == "training"]
    assert [p.step for p in training] == list(range(tiny.progress_every, tiny.steps + 1, 10))
    assert [p.phase for p in seen[len(training) :]] == ["certifying", "testing", "bracketing"]
    assert all(p.total_steps == tiny.steps and math.isfinite(p.objective) for p in seen)
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(seen, seen[1:], strict=False))

    calls = []

    def cancel_at_20(p: Progress) -> None:
        calls.append(p.step)
        if p.step >= 20:
            raise Cancelled("stop")

    config = EstimatorConfig(**{**tiny.to_dict(), "steps": 100_000})
    with pytest.raises(Cancelled):
        estimate_w1(x, y, config=config, callback=cancel_at_20)
    assert calls == [10, 20]


def test_stopping_rule_ends_training_early():
    x, y = _data()
    config = EstimatorConfig(
        width=16, depth=2, steps=5000, min_steps=50, patience=50, tolerance=1e-3, lr=1e-2
    )
    est = estimate_w1(x, y, config=config)
    assert est.steps < 5000


def test_holdout_too_small_is_none(tiny):
    est = estimate_w1(np.zeros((2, 2)), np.ones((1, 2)), config=tiny, holdout=0.2)
    assert est.holdout is None
    assert est.lower_bound <= math.sqrt(2) + 1e-9


def test_identical_sets_give_no_positive_bound(tiny):
    x, _ = _data()
    est = estimate_w1(x, x.copy(), config=tiny)
    assert abs(est.lower_bound) <= 1e-12


def test_float32_and_dict_config_and_explicit_device(tiny):
    x, y = _data()
    r64 = estimate_w1(x, y, config=tiny, device="cpu")
    r32 = estimate_w1(x.astype(np.float32), y.astype(np.float32), config=tiny.to_dict())
    assert r64.device == r32.device == "cpu"
    assert r32.config == tiny
    assert r32.lower_bound == pytest.approx(r64.lower_bound, rel=1e-3)


def test_the_stages_compose_to_estimate_w1(tiny):
    from lipcore.estimate import certify, envelop, fit, hold_out, prepare, two_sample_test

    x, y = _data()
    est = estimate_w1(x, y, config=tiny, seed=4)
    prep = prepare(x, y, config=tiny, seed=4)
    assert prep.split_x is not None and prep.split_y is not None
    # 300 rows: 60 held out, then 48 of the other 240 validate training, 192 train.
    assert prep.data.zx.shape == (192, 2) and prep.data.zx.dtype == torch.float32
    assert prep.data.validation is not None and prep.data.validation.zx.shape == (48, 2)
    fitted = fit(prep.data, prep.config, seed=prep.seed)
    assert fitted.result.steps == est.steps and fitted.result.objective == est.objective
    cert = certify(
        fitted, prep.x, prep.y, prep.a, prep.b, config=prep.config, device=prep.device,
        rng=prep.rng,
    )  # fmt: skip
    assert cert.fx.shape == (300,) and cert.fy.shape == (200,)
    cert, choice = envelop(cert, prep)
    assert choice == est.envelope
    assert cert.lower_bound == est.lower_bound and cert.center == est.center
    assert cert.grad_norm == est.grad_norm
    assert hold_out(cert, prep.split_x, prep.split_y) == est.holdout
    assert hold_out(cert, None, None) is None
    perms = prep.config.permutations
    assert two_sample_test(cert, prep.split_x, prep.split_y, perms, prep.seed) == est.test
    assert two_sample_test(cert, None, None, perms, prep.seed) is None

"""lipcore.envelope: the Lipschitz envelopes, their gradient, their choice by validation."""

import numpy as np
import pytest
import torch

from lipcore import EstimatorConfig, estimate_w1, evaluate, exact_w1, load_potential
from lipcore.certify import lipschitz_constant
from lipcore.envelope import (
    Envelope,
    anchor_count,
    envelope_of,
    one_se_choice,
    pick_anchors,
    prefix_sizes,
)


def cone_field(x: np.ndarray) -> np.ndarray:
    """A 1-Lipschitz function with kinks: the min of two cones and a plane."""
    c1, c2 = np.array([1.0, 0.0]), np.array([-1.0, 0.5])
    return np.minimum.reduce(
        [
            np.linalg.norm(x - c1, axis=1) + 0.2,
            np.linalg.norm(x - c2, axis=1),
            0.6 * x[:, 0] + 0.8 * x[:, 1] + 1.0,
        ]
    )


@pytest.mark.parametrize("side", ["source", "target"])
def test_envelope_is_one_lipschitz_and_agrees_with_the_values_at_its_anchors(side):
    rng = np.random.default_rng(0)
    anchors = rng.uniform(-2, 2, size=(300, 2))
    env = envelope_of(anchors, cone_field(anchors), side)
    at_anchors = evaluate(env, anchors, chunk=97)
    np.testing.assert_allclose(at_anchors, cone_field(anchors), atol=1e-12)
    p, q = rng.uniform(-3, 3, size=(2, 2000, 2))
    fp, fq = evaluate(env, p, chunk=500), evaluate(env, q, chunk=500)
    assert np.all(np.abs(fp - fq) <= np.linalg.norm(p - q, axis=1) + 1e-12)
    # The lower envelope never exceeds the function it was built from, the upper one never
    # falls below it: the extremal extensions of its values.
    if side == "source":
        assert np.all(fp <= cone_field(p) + 1e-12)
    else:
        assert np.all(fp >= cone_field(p) - 1e-12)
    assert lipschitz_constant(torch.nn.Sequential(env)) == 1.0


def test_envelope_values_match_a_direct_computation():
    rng = np.random.default_rng(1)
    anchors, values = rng.normal(size=(50, 3)), rng.normal(size=50)
    x = rng.normal(size=(40, 3))
    dist = np.linalg.norm(x[:, None, :] - anchors[None, :, :], axis=2)
    lower = evaluate(envelope_of(anchors, values, "source"), x, chunk=7)
    upper = evaluate(envelope_of(anchors, values, "target"), x, chunk=7)
    np.testing.assert_allclose(lower, (values[None, :] - dist).max(1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(upper, (values[None, :] + dist).min(1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("side", ["source", "target"])
def test_gradient_is_a_unit_vector_along_the_potential_also_at_an_anchor(side):
    rng = np.random.default_rng(2)
    w = np.array([0.6, 0.8])
    anchors = rng.uniform(-1, 1, size=(2000, 2))
    env = envelope_of(anchors, anchors @ w, side)  # the plane x -> w.x, 1-Lipschitz
    inner = anchors[np.abs(anchors).max(1) < 0.5][:50]  # away from the cloud's edge
    points = np.concatenate([inner, rng.uniform(-0.5, 0.5, size=(50, 2))])
    _, grad = evaluate(env, points, chunk=64, grad=True)
    np.testing.assert_allclose(np.linalg.norm(grad, axis=1), 1.0, atol=1e-12)
    # Dense anchors of a plane: every active cone points (nearly) along the plane's slope,
    # at an anchor too (the cone of that anchor itself has no slope there). Near the cloud's
    # edge there may be no anchor further along the slope to take over.
    assert np.min(grad @ w) > 0.9


def test_prefix_values_are_the_envelopes_of_the_first_anchors():
    rng = np.random.default_rng(3)
    anchors, values = (
        torch.from_numpy(rng.normal(size=(64, 2))),
        torch.from_numpy(rng.normal(size=64)),
    )
    x = torch.from_numpy(rng.normal(size=(30, 2)))
    sizes = prefix_sizes(64)
    assert sizes == [2, 4, 8, 16, 32, 64]
    for side in ("source", "target"):
        got = Envelope(anchors, values, side).prefix_values(x, sizes)
        for j, k in enumerate(sizes):
            want = Envelope(anchors[:k], values[:k], side)(x)[:, 0]
            torch.testing.assert_close(got[j], want, rtol=0, atol=1e-12)


def test_anchor_choice_bounds_and_randomness():
    assert anchor_count(4096, 2, 100) == 100
    assert anchor_count(4096, 10_000, 10**6) == 419  # 32 MiB of float64 rows of dimension 1e4
    assert anchor_count(0, 2, 100) == 0
    # Work bound: 2e6 samples of dimension 64 get 2**35 / 1.28e8 = 268 anchors, not 4096.
    assert anchor_count(4096, 64, 10**6, rows=2 * 10**6) == 268
    assert anchor_count(4096, 64, 10**6, rows=40_000) == 4096
    assert prefix_sizes(0) == [] and prefix_sizes(1) == [1] and prefix_sizes(5) == [1, 2, 5]
    assert prefix_sizes(4096)[0] == 128
    rows, w = np.arange(10, 20), np.array([1.0] * 5 + [0.0] * 5)
    rng = np.random.default_rng(0)
    picked = pick_anchors(rows, w, 3, rng)
    assert len(picked) == 3 and set(picked) <= set(range(10, 15))
    assert sorted(pick_anchors(rows, w, 99, rng)) == list(range(10, 15))  # only weighed rows


def test_envelope_rejects_bad_shapes_and_sides():
    with pytest.raises(ValueError, match="side"):
        Envelope(torch.zeros(3, 2), torch.zeros(3), "left")
    with pytest.raises(ValueError, match="anchors"):
        Envelope(torch.zeros(3, 2), torch.zeros(2), "source")
    with pytest.raises(ValueError, match="anchors"):
        Envelope(torch.zeros(0, 2), torch.zeros(0), "source")


# -- the choice inside estimate_w1 ----------------------------------------------------------------

#: An under-trained network on a pair where the source sits on a few sharp tips: the envelope
#: over the source samples fits the tips better than 30 steps of a small network.
SHORT = EstimatorConfig(width=16, depth=2, steps=30, batch_size=128, min_steps=0, patience=0)


def tips(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = np.array([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])
    x = centres[rng.integers(3, size=n)] + 0.02 * rng.normal(size=(n, 2))
    y = rng.uniform(-2, 2, size=(n, 2))
    return x, y


def test_the_envelope_is_kept_only_when_validation_prefers_it_and_certifies_exactly(tmp_path):
    rng = np.random.default_rng(4)
    x, y = tips(600, rng)
    est = estimate_w1(x, y, config=SHORT, seed=0)
    net = estimate_w1(x, y, config=EstimatorConfig(**{**SHORT.to_dict(), "envelope_anchors": 0}))
    assert net.envelope is None
    assert [type(m).__name__ for m in net.potential][-1] == "Linear"
    choice = est.envelope
    assert choice is not None and choice.side == "source"
    assert choice.validation[f"source:{choice.anchors}"] > choice.validation["network"]
    assert est.to_dict()["envelope"] == choice.to_dict()
    assert choice.kept == f"source envelope ({choice.anchors})" and net.envelope is None
    # The potential served is the envelope; its certificate is exact and the bound holds.
    (module,) = est.potential
    assert isinstance(module, Envelope) and est.lipschitz_constant == 1.0
    fx, fy = evaluate(est.potential, x, chunk=256), evaluate(est.potential, y, chunk=256)
    assert est.lower_bound == pytest.approx(fx.mean() - fy.mean(), abs=1e-12)
    assert est.lower_bound <= exact_w1(x, y) + 1e-9
    assert est.holdout.value > net.holdout.value
    # Saved and loaded, it is the same function.
    path = tmp_path / "env.safetensors"
    est.save(path)
    loaded = load_potential(path)
    pts = rng.normal(size=(100, 2))
    np.testing.assert_array_equal(
        evaluate(loaded, pts, chunk=100), evaluate(est.potential, pts, chunk=100)
    )


def test_the_network_is_kept_when_no_envelope_beats_it_on_validation():
    # Two shifted Gaussians in 8-D, well trained: the plane-like potential of a shift is what
    # the network fits; the envelopes of 320 scattered training samples fit their noise instead.
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(500, 8)) + 1.0, rng.normal(size=(500, 8))
    cfg = EstimatorConfig(width=16, depth=2, steps=300, batch_size=256, min_steps=0, patience=0)
    est = estimate_w1(x, y, config=cfg)
    assert est.envelope is not None and est.envelope.side is None
    assert est.envelope.kept == "network"
    assert max(est.envelope.validation.values()) == est.envelope.validation["network"]
    assert isinstance(est.potential[-1], torch.nn.Linear)


def test_no_validation_part_means_no_envelope():
    rng = np.random.default_rng(6)
    x, y = tips(200, rng)
    cfg = EstimatorConfig(**{**SHORT.to_dict(), "validation": 0.0})
    assert estimate_w1(x, y, config=cfg).envelope is None


def test_one_se_rule_prefers_the_conservative_candidate_within_the_noise():
    rng = np.random.default_rng(7)
    n = 400
    w = np.full(n, 1 / n)
    fx, fy = rng.normal(1.0, 1.0, n), rng.normal(0.0, 1.0, n)
    noise = 0.05 * rng.normal(size=(2, n))
    noise -= noise.mean(axis=1, keepdims=True)  # moves no objective, only adds paired noise
    # Better by less than its paired noise: the network (first) is kept.
    close = ("source:64", fx + noise[0] + 0.001, fy + noise[1])
    kept, scores = one_se_choice([("network", fx, fy), close], w, w)
    assert kept == 0 and scores["source:64"] > scores["network"]
    # Better by far more than the noise: taken.
    far = ("source:32", fx + noise[0] + 0.2, fy + noise[1])
    kept, _ = one_se_choice([("network", fx, fy), close, far], w, w)
    assert kept == 2
    # Worse: never taken.
    worse = ("target:64", fx - 0.2, fy)
    assert one_se_choice([("network", fx, fy), worse], w, w)[0] == 0

"""CPU tests of every code path that bench/gpu.py times on a GPU (CI has no GPU): the precision
levers, torch.compile (and its eager fallback), cuda_graphs off CUDA, the resident chunked float64
certification, and the benchmark's FLOP count and resident pipeline."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from bench.gpu import envelope_check, resident_estimate, step_flops
from lipcore import Estimate, EstimatorConfig, estimate_w1, exact_w1
from lipcore.accel import CompiledStep, forward_autocast, training_precision
from lipcore.certify import evaluate

SMALL = {"width": 16, "depth": 2, "steps": 30, "batch_size": 64, "patience": 0}


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(150, 3))
    y = rng.normal(size=(170, 3)) * 1.2 + [1.0, 0.0, 0.0]
    return x, y, exact_w1(x, y)


@pytest.fixture(scope="module")
def fp32_est(case: tuple[np.ndarray, np.ndarray, float]) -> Estimate:
    x, y, _ = case
    return estimate_w1(x, y, config=SMALL, seed=1, device="cpu")


@pytest.fixture(scope="module")
def fp32(fp32_est: Estimate) -> float:
    return fp32_est.lower_bound


def test_precision_levers_sound_and_close_to_float32(
    case: tuple[np.ndarray, np.ndarray, float], fp32: float, fp32_est: Estimate
) -> None:
    x, y, exact = case
    assert 0 < fp32 <= exact + 1e-9
    bf16 = estimate_w1(x, y, config={**SMALL, "precision": "bf16"}, seed=1, device="cpu")
    tf32 = estimate_w1(x, y, config={**SMALL, "precision": "tf32"}, seed=1, device="cpu")
    assert bf16.lower_bound <= exact + 1e-9  # sound: certified in float64 afterwards
    assert abs(bf16.lower_bound - fp32) <= 0.05 * exact
    # the float64 export is orthonormal as in float32 (L in data units: the input scale)
    assert bf16.lipschitz_constant == pytest.approx(fp32_est.lipschitz_constant, rel=1e-3)
    assert tf32.lower_bound == fp32  # TF32 is a no-op on a CPU: the very same run
    assert bf16.config.precision == "bf16" and bf16.to_dict()["config"]["precision"] == "bf16"


def test_bf16_autocast_runs_the_forward_in_bfloat16() -> None:
    lin = torch.nn.Linear(4, 4)
    with forward_autocast("bf16", torch.device("cpu")):
        assert lin(torch.ones(2, 4)).dtype == torch.bfloat16
    with forward_autocast("float32", torch.device("cpu")):
        assert lin(torch.ones(2, 4)).dtype == torch.float32


def test_tf32_scope_restores_the_global_setting() -> None:
    before = torch.get_float32_matmul_precision()
    with training_precision("tf32", torch.device("cpu")):  # no-op on a CPU
        assert torch.get_float32_matmul_precision() == before
    with pytest.raises(RuntimeError), training_precision("tf32", torch.device("cpu")):
        raise RuntimeError("boom")
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"precision": "fp8"}, "config.precision"),
        ({"compile": "yes"}, "config.compile"),
        ({"cuda_graphs": 1}, "config.cuda_graphs"),
    ],
)
def test_lever_values_are_validated(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EstimatorConfig.from_dict(bad)


def test_levers_round_trip() -> None:
    c = EstimatorConfig(precision="bf16", compile=True, cuda_graphs=True)
    assert EstimatorConfig.from_dict(c.to_dict()) == c
    assert EstimatorConfig().precision == "float32" and not EstimatorConfig().compile


@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile (inductor) needs a C++ compiler on a CPU; none on PATH",
)
def test_compile_trains_without_falling_back(
    case: tuple[np.ndarray, np.ndarray, float], fp32: float
) -> None:
    x, y, exact = case
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = estimate_w1(x, y, config={**SMALL, "compile": True}, seed=1, device="cpu")
    fell_back = [w for w in caught if "torch.compile failed" in str(w.message)]
    assert not fell_back, fell_back[0].message
    assert est.lower_bound <= exact + 1e-9
    assert est.lower_bound == pytest.approx(fp32, abs=1e-3 * exact)  # same math, fused kernels


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn: object, **kw: object) -> object:
        def fail(*args: object) -> object:
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    step = CompiledStep(lambda t: t * 2)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no compiler here"):
        out = step(torch.ones(3))
    assert step.fell_back and torch.equal(out, torch.full((3,), 2.0))
    assert torch.equal(step(torch.ones(2)), torch.full((2,), 2.0))  # eager from then on


def test_cuda_graphs_off_cuda_warns_and_trains_as_without(
    case: tuple[np.ndarray, np.ndarray, float], fp32: float
) -> None:
    x, y, _ = case
    with pytest.warns(RuntimeWarning, match="cuda_graphs ignored"):
        est = estimate_w1(x, y, config={**SMALL, "cuda_graphs": True}, seed=1, device="cpu")
    assert est.lower_bound == fp32


def test_chunked_certification_does_not_depend_on_the_chunk() -> None:
    rng = np.random.default_rng(1)
    est_model = torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
    ).double()
    x = rng.normal(size=(100, 3))
    xt = torch.from_numpy(x)
    # rows that live in a tensor (on a device) and the same rows in a numpy array
    f7, fbig = evaluate(est_model, xt, chunk=7), evaluate(est_model, xt, chunk=10**6)
    assert f7.dtype == np.float64 and f7.shape == (100,)
    assert np.allclose(f7, fbig, rtol=0, atol=1e-12)
    g7, gbig = evaluate(est_model, x, chunk=7), evaluate(est_model, x, chunk=10**6)
    assert np.allclose(g7, gbig, rtol=0, atol=1e-12)
    assert np.allclose(g7, f7, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="chunk"):
        evaluate(est_model, xt, chunk=0)


def test_step_flops_counts_by_hand() -> None:
    # d=2, width 2, depth 1, batch 1 (2 rows): forward 2*2*2*2 + 2*2*2*1 = 24; backward
    # 2*24 - 2*2*2*2 = 32 (no input gradient); Björck 2 * (2*2*2*2) = 32, with backward x3 = 96.
    assert step_flops(2, 2, 1, 1, 1) == 24 + 32 + 96
    # target 1: 10.83 GFLOP per step, about 94 % of it the data path
    assert step_flops(64, 256, 4, 4096, 1) == 10_829_692_928
    assert step_flops(64, 256, 4, 4096, 2) - step_flops(64, 256, 4, 4096, 1) == 616_562_688


def test_resident_pipeline_is_sound(case: tuple[np.ndarray, np.ndarray, float]) -> None:
    x, y, exact = case
    cfg = EstimatorConfig(**SMALL, eval_chunk=50)
    r = resident_estimate(torch.from_numpy(x).float(), torch.from_numpy(y).float(), cfg)
    exact32 = exact_w1(x.astype(np.float32), y.astype(np.float32))
    assert 0 < r["lower_bound"] <= exact32 + 1e-9
    lo, hi = r["holdout_ci95"]
    assert lo <= r["holdout"] <= hi
    assert r["steps"] == SMALL["steps"]
    assert abs(exact32 - exact) < 1e-5


def test_the_envelope_check_of_the_gpu_benchmark_passes_on_the_cpu() -> None:
    out = envelope_check(torch.device("cpu"), m=200, n=300, d=4)
    assert out["ok"] and out["values_max_abs"] == 0.0 and out["grads_max_abs"] == 0.0

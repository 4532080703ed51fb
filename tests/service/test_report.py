"""The report picture: drawing from plain arrays, g = (f - c)/L, and the route's 200/404/409."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from service import report
from service.store import DatasetRow, EstimateRow
from service.store.models import utcnow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_MAGIC
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _linear(d: int, w: list[float], bias: float = 0.0) -> nn.Sequential:
    lin = nn.Linear(d, 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([w], dtype=torch.float64))
        lin.bias.fill_(bias)
    return nn.Sequential(lin).requires_grad_(False)


def test_render_numbers_only_for_exact():
    inp = report.ReportInputs(
        title="exact",
        numbers=report.summary_numbers(
            "succeeded",
            {"method": "exact", "w1": 1.5, "exact": {"value": 1.5, "solver": "pot.emd2"}},
        ),
    )
    w, h = _size(report.render_png(inp))
    assert (w, h) == (650, 450)  # one panel
    assert ("exact (pot.emd2)", "1.5") in inp.numbers


def test_render_all_panels_for_2d():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 2)), rng.normal(size=(200, 2)) + [2.0, 0.0]
    inp = report.ReportInputs(
        title="2-D", numbers=[("w1", "2")], history=np.array([[0, 0.1], [10, 1.5], [20, 1.9]])
    )
    report.potential_views(inp, _linear(2, [1.0, 0.0]), 0.0, 1.0, x, None, y, None, grid=20)
    assert inp.grid_g.shape == (20, 20)
    w, h = _size(report.render_png(inp))
    assert (w, h) == (1300, 900)  # 2 x 2 panels


def test_potential_views_centres_and_scales():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(40, 3))
    a = rng.random(50)
    inp = report.ReportInputs(title="t", numbers=[])
    report.potential_views(inp, _linear(3, [2.0, 0.0, 0.0], 5.0), 1.0, 2.0, x, a, y, None)
    np.testing.assert_allclose(inp.g_source, (2 * x[:, 0] + 5 - 1) / 2, rtol=1e-12)
    np.testing.assert_allclose(inp.g_target, (2 * y[:, 0] + 5 - 1) / 2, rtol=1e-12)
    np.testing.assert_array_equal(inp.w_source, a)
    assert inp.grid_g is None  # d = 3: no heat map


def test_subsample_is_bounded_and_seeded():
    x = np.arange(1000.0).reshape(500, 2)
    w = np.arange(500.0)
    s1, w1 = report.subsample(x, w, 100, np.random.default_rng(3))
    s2, _ = report.subsample(x, w, 100, np.random.default_rng(3))
    assert s1.shape == (100, 2) and np.array_equal(s1, s2)
    np.testing.assert_array_equal(w1, s1[:, 0] / 2)  # weights follow their rows


# -- the route ---------------------------------------------------------------------------------


def _dataset(app, ds_id: str, samples: np.ndarray) -> None:
    sha = (ds_id.encode().hex() * 64)[:64]
    app.state.blobs.put_dataset(sha, samples, None)
    with app.state.db.session() as s:
        s.add(
            DatasetRow(
                id=ds_id, name=None, n=samples.shape[0], d=samples.shape[1],
                dtype="float64", weighted=False, sha256=sha, bytes=samples.nbytes,
            )
        )  # fmt: skip


def _estimate(app, est_id: str, status: str, result=None, history=None) -> None:
    with app.state.db.session() as s:
        s.add(
            EstimateRow(
                id=est_id, status=status, source_id="ds_x", target_id="ds_y",
                method="lipschitz", crosscheck="never", holdout=0.2, seed=0, config={},
                request_hash="h", result=result, history=history,
                started_at=utcnow(), finished_at=utcnow() if status != "running" else None,
            )
        )  # fmt: skip


@pytest.fixture(scope="module")
def trained():
    """One tiny fitted potential for the route tests (trained once per module)."""
    lipcore = pytest.importorskip("lipcore")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 2)), rng.normal(size=(100, 2)) + [1.5, 0.0]
    cfg = {"width": 16, "depth": 2, "steps": 30, "batch_size": 64}
    est = lipcore.estimate_w1(x, y, config=lipcore.EstimatorConfig.from_dict(cfg), holdout=0.0)
    return x, y, est


@pytest.fixture
def with_estimate(api, trained):
    x, y, est = trained
    _dataset(api.app, "ds_x", x)
    _dataset(api.app, "ds_y", y)
    est.save(api.app.state.blobs.potential_path("est_done"))
    result = {
        "method": "lipschitz", "w1": est.lower_bound, "lower_bound": est.lower_bound,
        "lipschitz_constant": est.lipschitz_constant, "holdout": None, "exact": None,
        "relative_gap": None, "diagnostics": None, "potential_center": 0.0, "device": "cpu",
        "seconds": est.seconds, "steps": est.steps, "config": est.config.to_dict(),
    }  # fmt: skip
    _estimate(api.app, "est_done", "succeeded", result, [[s, o] for s, o in est.history])
    _estimate(api.app, "est_run", "running")
    _estimate(api.app, "est_exact", "succeeded", {"method": "exact", "w1": 1.2, "exact": None})
    return api


def test_route_png_for_finished_2d(with_estimate):
    r = with_estimate.get("/v1/estimates/est_done/report.png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert _size(r.content) == (1300, 900)
    again = with_estimate.get("/v1/estimates/est_done/report.png")
    assert again.content == r.content


def test_route_exact_only(with_estimate):
    r = with_estimate.get("/v1/estimates/est_exact/report.png")
    assert r.status_code == 200
    assert _size(r.content) == (650, 450)


def test_route_409_while_running_and_404_unknown(with_estimate):
    r = with_estimate.get("/v1/estimates/est_run/report.png")
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "running" in r.json()["detail"]
    r = with_estimate.get("/v1/estimates/est_nope/report.png")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


def test_png_decodes(with_estimate):
    from matplotlib.image import imread

    r = with_estimate.get("/v1/estimates/est_done/report.png")
    img = imread(io.BytesIO(r.content), format="png")
    assert img.shape[:2] == (900, 1300)
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_route_unreadable_potential_still_answers_with_the_numbers(with_estimate):
    path = with_estimate.app.state.blobs.potential_path("est_done")
    path.write_bytes(b"not a safetensors file")
    r = with_estimate.get("/v1/estimates/est_done/report.png")
    assert r.status_code == 200
    assert _size(r.content) == (1300, 450)  # objective + numbers, no histograms


def test_headline_is_the_verdict_sentence():
    verdict = {"summary": "no detectable difference (p = 0.62, alpha = 0.05)"}
    assert report.headline("succeeded", {"verdict": verdict}, "x") == verdict["summary"]
    assert report.headline("succeeded", {"verdict": None}, "ids") == "ids"
    assert report.headline("failed", None, "ids") == "ids"


def test_features_panel_fills_the_picture_beyond_2d(tmp_path):
    feats = [
        {"name": f"f{j}", "index": j, "marginal_w1": 0.5 / (j + 1), "attribution": 0.5 / 2**j,
         "direction": 1.0}
        for j in range(12)
    ]  # fmt: skip
    inp = report.ReportInputs(
        title="differ (p < 0.001): distance 0.47, 95 % CI [0.39, 0.55]",
        numbers=[("status", "succeeded")],
        history=np.array([[10, 0.1], [20, 0.4]]),
        g_source=np.random.default_rng(0).normal(size=50),
        g_target=np.random.default_rng(1).normal(size=50),
        features=feats,
    )
    with_features = report.render_png(inp)
    inp.features = []
    without = report.render_png(inp)
    (tmp_path / "r.png").write_bytes(with_features)
    assert with_features[:8] == b"\x89PNG\r\n\x1a\n" and len(with_features) > len(without)

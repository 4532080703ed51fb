import numpy as np
import pytest
import scipy.stats
import torch

from lipcore import ExactNotConverged, ExactTooLarge, exact_w1


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(("n", "m"), [(1, 1), (7, 3), (200, 350)])
def test_1d_closed_form_matches_scipy(weighted, n, m):
    rng = np.random.default_rng(n * 1000 + m)
    u, v = rng.normal(size=n), rng.standard_t(3, size=m) + 0.7
    a = b = None
    if weighted:
        a = rng.random(n)
        b = rng.random(m)
        b[0] = 0.0  # a zero weight is allowed
        if m == 1:
            b[0] = 1.0
        a, b = a / a.sum(), b / b.sum()
    ref = scipy.stats.wasserstein_distance(u, v, a, b)
    assert exact_w1(u[:, None], v[:, None], a, b) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    assert exact_w1(u, v, a, b) == pytest.approx(ref, rel=1e-12, abs=1e-14)  # 1-D arrays


def test_1d_has_no_size_limit():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=30_000), rng.normal(size=20_000) + 1.0
    ref = scipy.stats.wasserstein_distance(u, v)
    assert exact_w1(u, v, max_pairs=10) == pytest.approx(ref, rel=1e-12)


def test_translation_of_the_same_cloud_is_the_shift_length():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3))
    shift = np.array([0.3, -0.4, 1.2])
    assert exact_w1(x, x + shift) == pytest.approx(np.linalg.norm(shift), rel=1e-10)
    assert exact_w1(x, x) == pytest.approx(0.0, abs=1e-12)


def test_far_from_origin_keeps_its_digits():
    # the expanded-square distance (ot.dist) returns garbage here; direct differences do not
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(50, 2)), rng.normal(size=(40, 2)) + [1.5, 0]
    ref = exact_w1(x, y)
    assert exact_w1(x + 1e8, y + 1e8) == pytest.approx(ref, rel=1e-6)
    tiny = 1e-9 * x  # and pairs much closer than the data's spread
    assert exact_w1(tiny + 5.0, 1e-9 * y + 5.0) == pytest.approx(1e-9 * ref, rel=1e-6)


def test_weighted_emd_against_a_hand_computed_case():
    x = np.array([[0.0, 0.0], [1.0, 0.0]])
    y = np.array([[0.0, 1.0]])
    # mass 0.25 moves 1, mass 0.75 moves sqrt(2)
    expected = 0.25 * 1.0 + 0.75 * np.sqrt(2.0)
    assert exact_w1(x, y, [0.25, 0.75], None) == pytest.approx(expected, rel=1e-12)


def test_symmetric_and_accepts_torch_float32():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 2)), rng.normal(size=(30, 2)) * 2
    v1 = exact_w1(x, y)
    assert exact_w1(y, x) == pytest.approx(v1, rel=1e-10)
    v32 = exact_w1(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert v32 == pytest.approx(v1, rel=1e-5)


def test_size_limit_raises_exact_too_large():
    x = np.zeros((100, 2))
    with pytest.raises(ExactTooLarge, match="pairs"):
        exact_w1(x, x, max_pairs=100 * 100 - 1)
    assert issubclass(ExactTooLarge, ValueError)
    assert exact_w1(x, x, max_pairs=100 * 100) == 0.0


def test_non_convergence_raises(monkeypatch):
    import ot

    def fake_emd2(a, b, m, numItermax, log):
        assert numItermax >= 10**8 and log is True
        return 1.0, {"result_code": 2, "warning": "numItermax reached"}

    monkeypatch.setattr(ot, "emd2", fake_emd2)
    with pytest.raises(ExactNotConverged, match="result_code 2"):
        exact_w1(np.zeros((3, 2)), np.ones((3, 2)))
    assert issubclass(ExactNotConverged, RuntimeError)

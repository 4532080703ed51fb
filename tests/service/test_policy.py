"""service.policy: the one decision of what an estimate runs, table-driven."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lipcore.envelope import EnvelopeChoice
from service import policy
from service.settings import Settings

LIMITS = policy.Limits(exact_max_pairs=100, config={"steps": 5000, "width": 256})
SMALL = {"n": 10, "m": 10, "d": 2}  # 100 pairs: within the limit
LARGE = {"n": 10, "m": 11, "d": 2}  # 110 pairs: over it
LARGE_1D = {"n": 1000, "m": 1000, "d": 1}  # closed form: any size


def plan(method: str, crosscheck: str, sizes: dict, holdout: float = 0.2, config=None):
    return policy.plan(
        method=method, crosscheck=crosscheck, holdout=holdout, config=config, limits=LIMITS, **sizes
    )


@pytest.mark.parametrize(
    ("method", "crosscheck", "sizes", "chosen", "run_exact"),
    [
        ("auto", "auto", SMALL, "lipschitz", True),
        ("auto", "never", SMALL, "lipschitz", False),
        ("auto", "auto", LARGE, "lipschitz", False),
        ("auto", "never", LARGE, "lipschitz", False),
        ("auto", "auto", LARGE_1D, "lipschitz", True),
        ("exact", "never", SMALL, "exact", True),
        ("exact", "always", LARGE_1D, "exact", True),
        ("lipschitz", "auto", SMALL, "lipschitz", True),
        ("lipschitz", "always", SMALL, "lipschitz", True),
        ("lipschitz", "never", SMALL, "lipschitz", False),
        ("lipschitz", "auto", LARGE, "lipschitz", False),
        ("lipschitz", "auto", LARGE_1D, "lipschitz", True),
        ("lipschitz", "always", LARGE_1D, "lipschitz", True),
    ],
)
def test_plan_table(method, crosscheck, sizes, chosen, run_exact) -> None:
    got = plan(method, crosscheck, sizes)
    assert (got.method, got.run_exact) == (chosen, run_exact)
    assert got.fits_potential == (chosen == "lipschitz")


@pytest.mark.parametrize(
    ("method", "crosscheck", "sizes", "holdout", "config", "field", "code"),
    [
        ("exact", "auto", LARGE, 0.2, None, "method", "exact_too_large"),
        ("lipschitz", "always", LARGE, 0.2, None, "crosscheck", "exact_too_large"),
        ("auto", "always", LARGE, 0.2, None, "crosscheck", "exact_too_large"),
        ("fast", "auto", SMALL, 0.2, None, "method", "invalid_request"),
        ("auto", "sometimes", SMALL, 0.2, None, "crosscheck", "invalid_request"),
        ("lipschitz", "never", {"n": 1, "m": 10, "d": 2}, 0.9, None, "holdout", "invalid_request"),
        ("lipschitz", "never", SMALL, 0.2, {"steps": 5001}, "config.steps", "invalid_config"),
        ("lipschitz", "never", SMALL, 0.2, {"stpes": 5}, "config", "invalid_config"),
        ("lipschitz", "never", SMALL, 0.2, {"width": 0}, "config.width", "invalid_config"),
    ],
)
def test_plan_refusals_name_the_field(method, crosscheck, sizes, holdout, config, field, code):
    with pytest.raises(policy.PolicyError) as info:
        plan(method, crosscheck, sizes, holdout, config)
    assert (info.value.field, info.value.code) == (field, code), str(info.value)


def test_default_over_a_limit_says_it_is_the_default() -> None:
    tight = policy.Limits(config={"steps": 10})
    with pytest.raises(policy.PolicyError, match="the default; set a smaller one"):
        policy.check_config({}, tight)
    assert policy.check_config({"steps": 10}, tight).steps == 10


def test_holdout_is_not_checked_when_only_the_exact_solver_runs() -> None:
    tiny = {"n": 1, "m": 1, "d": 2}
    assert plan("exact", "auto", tiny, holdout=0.9).method == "exact"
    with pytest.raises(policy.PolicyError, match="holdout"):
        plan("auto", "auto", tiny, holdout=0.9)


def test_relabelled_exact_solves_only_where_cheap() -> None:
    limits = policy.Limits(
        exact_max_pairs=10**6, exact_test_max_pairs=100, noise_floor_max_pairs=400
    )

    def perms(method, n):
        return policy.plan(
            method=method, crosscheck="auto", n=n, m=n, d=3, holdout=0.2, config=None,
            limits=limits,
        ).exact_permutations  # fmt: skip

    assert perms("exact", 10) == policy.EXACT_TEST_PERMUTATIONS and perms("exact", 11) == 0
    assert perms("auto", 20) == policy.NOISE_FLOOR_PERMUTATIONS and perms("auto", 21) == 0


def test_limits_from_settings_cover_every_bounded_knob() -> None:
    limits = policy.Limits.from_settings(Settings(_env_file=None, max_steps=7, max_width=9))
    assert limits.config["steps"] == 7 and limits.config["width"] == 9
    assert set(limits.config) == set(policy.CONFIG_LIMITS)


def test_result_shape_is_the_same_for_both_methods() -> None:
    from lipcore import Holdout, TwoSampleTest

    exact = policy.exact_field(2.5, d=2, seconds=0.1)
    chosen = plan("exact", "auto", SMALL)
    relabelled = TwoSampleTest(2.5, 0.005, 200, "exact-w1-permutation", 2.0)
    only_exact = policy.result(chosen, exact=exact, fitted=None, seconds=0.2, exact_test=relabelled)
    assert only_exact["w1"] == 2.5 and only_exact["method"] == "exact"
    assert only_exact["lower_bound"] is None and only_exact["exact"]["solver"] == "pot.emd2"
    assert only_exact["verdict"]["differ"] and only_exact["distance"] is None
    # The floor (2.0) is most of the empirical figure (2.5): said before any figure.
    assert only_exact["noise_floor"]["value"] == 2.0
    assert any("dominated by sampling noise" in n for n in only_exact["notes"])
    held = Holdout(0.4, (0.3, 0.5), 10, 10)
    fitted = SimpleNamespace(
        lower_bound=2.0, lipschitz_constant=1.0, holdout=held, grad_norm={"q50": 0.2},
        objective=2.0, center=0.5, device="cpu", steps=3,
        config=SimpleNamespace(to_dict=lambda: {"steps": 3}),
        test=TwoSampleTest(0.4, 0.6, 1000, "heldout-potential-permutation", 0.0),
        features=[], upper_bound=SimpleNamespace(value=2.6), bracket_width=0.2308,
        envelope=EnvelopeChoice("source", 64, {"network": 1.0, "source:64": 1.2}),
    )  # fmt: skip
    both = policy.result(
        plan("lipschitz", "auto", SMALL), exact=exact, fitted=fitted, seconds=1, alpha=0.1
    )
    assert set(both) == set(only_exact)
    assert both["w1"] == 2.0 and both["relative_gap"] == pytest.approx(0.2)
    assert both["potential_center"] == 0.5 and both["config"] == {"steps": 3}
    assert both["upper_bound"] == 2.6 and both["bracket_width"] == 0.2308
    assert both["diagnostics"]["envelope"] == {
        "side": "source", "anchors": 64, "validation": {"network": 1.0, "source:64": 1.2},
    }  # fmt: skip
    assert both["verdict"]["differ"] is False and both["verdict"]["alpha"] == 0.1
    assert both["verdict"]["summary"].startswith("no detectable difference (p = 0.6")
    assert both["distance"] == {"value": 0.4, "ci95": [0.3, 0.5], "kind": "distribution"}
    # A flat potential on a null pair is not called under-fitted; the bound above the
    # held-out interval is explained.
    notes = " ".join(both["notes"])
    assert "not signs of under-fitting" in notes and "above the held-out interval" in notes
    assert "may under-fit" not in notes


def test_no_test_for_a_large_exact_job_is_said() -> None:
    exact = policy.exact_field(2.5, d=2, seconds=0.1)
    out = policy.result(plan("exact", "never", SMALL), exact=exact, fitted=None, seconds=0.1)
    assert out["verdict"] is None and "no test was run" in out["notes"][0]

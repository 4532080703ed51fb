"""service.problems: one catalogue, rendered the same by every route."""

from __future__ import annotations

import pytest

from service.problems import CATALOGUE, JobError, ProblemError, lookup


def test_codes_are_unique_and_statuses_are_errors() -> None:
    assert len(CATALOGUE) == len({p.type for p in CATALOGUE.values()})
    assert all(400 <= p.status < 600 and p.title for p in CATALOGUE.values())


def test_unknown_code_is_a_bug_that_names_itself() -> None:
    with pytest.raises(KeyError, match="no-such-thing"):
        lookup("no-such-thing")
    with pytest.raises(KeyError):
        ProblemError("no-such-thing")


def test_job_error_dict_takes_its_title_from_the_catalogue() -> None:
    err = JobError("timeout", "over 5 s")
    assert err.to_dict() == {
        "type": "timeout",
        "title": lookup("timeout").title,
        "detail": "over 5 s",
    }


def test_routes_answer_catalogue_problems(api) -> None:
    r = api.get("/v1/estimates/est_nope")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem")
    assert r.json()["type"] == "/problems/estimate-not-found"
    assert r.json()["title"] == lookup("estimate-not-found").title
    r = api.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["type"] == "/problems/not-found"


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/estimates/est_x", {"GET", "HEAD", "DELETE"}),
        ("/v1/datasets", {"GET", "HEAD", "POST"}),
        ("/v1/datasets/ds_x", {"GET", "HEAD", "DELETE"}),
        ("/v1/estimates/est_x/cancel", {"POST"}),
    ],
)
def test_405_allow_lists_every_method_of_the_path(api, path, allowed) -> None:
    r = api.request("OPTIONS", path)
    assert r.status_code == 405 and r.json()["type"] == "/problems/method-not-allowed"
    assert set(r.headers["allow"].split(", ")) == allowed


def test_undecodable_body_is_a_documented_400(api) -> None:
    """A JSON body that is not UTF-8 (FastAPI's own 400, before any validation)."""
    headers = {"content-type": "application/json"}
    r = api.post("/v1/estimates", content=b'"\xff"', headers=headers)
    assert r.status_code == 400 and r.json()["type"] == "/problems/malformed-request"
    documented = api.get("/openapi.json").json()["paths"]["/v1/estimates"]["post"]["responses"]
    assert "400" in documented

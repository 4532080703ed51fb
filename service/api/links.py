"""OpenAPI links: from the routes that create a resource to the routes that take its id, so
that clients and tools (schemathesis's stateful phase) can follow a created id."""

from __future__ import annotations

from typing import Any

_ID = "$response.body#/id"


def _to(operation_id: str, parameter: str | None, **extra: Any) -> dict[str, Any]:
    link: dict[str, Any] = {"operationId": operation_id, **extra}
    if parameter is not None:
        link["parameters"] = {parameter: _ID}
    return link


DATASET_LINKS: dict[str, Any] = {
    "GetDataset": _to("get_dataset", "dataset_id"),
    "DeleteDataset": _to("delete_dataset", "dataset_id"),
    "EstimateAgainstItself": _to(
        "submit_estimate",
        None,
        requestBody={"source": _ID, "target": _ID, "method": "exact"},
        description="Estimate with this dataset as both source and target (W1 = 0).",
        **{"x-schemathesis": {"merge_body": False}},
    ),
    "ListEstimatesOfDataset": _to("list_estimates", "query.dataset"),
}

ESTIMATE_LINKS: dict[str, Any] = {
    name: _to(operation_id, "estimate_id")
    for name, operation_id in (
        ("GetEstimate", "get_estimate"),
        ("FollowEstimate", "estimate_events"),
        ("CancelEstimate", "cancel_estimate"),
        ("DeleteEstimate", "delete_estimate"),
        ("DownloadPotential", "download_potential"),
        ("EvaluatePotential", "evaluate_potential"),
        ("GetReport", "get_report"),
    )
}

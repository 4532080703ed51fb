"""The OpenAPI document is the API's reference (issue 14): every field of every request and
result model is described, every route shows an example request (where it takes a JSON body) and
an example answer for its success status, and every example is one the service could really
send or take: it validates against its pydantic model (round trip included, so a misspelt or
stale key cannot hide in a model that ignores unknown keys) and against the document's schema."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from service.api import datasets, errors, estimate_models, ops, pages
from service.app import create_app
from service.metrics import CONTENT_TYPE as METRICS_TYPE
from service.settings import Settings

Spec = dict[str, Any]
#: Media types whose examples can be written in the document (the binary ones cannot).
TEXT_TYPES = ("application/json", "text/csv", "text/event-stream", METRICS_TYPE)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Spec:
    data = tmp_path_factory.mktemp("openapi") / "data"
    return create_app(Settings(_env_file=None, data_dir=data)).openapi()


def models() -> dict[str, type[BaseModel]]:
    """The API's pydantic models by name (the name FastAPI gives their component schemas)."""
    found: dict[str, type[BaseModel]] = {}
    for module in (estimate_models, datasets, ops, errors, pages):
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj is not BaseModel:
                found[name] = obj
    return found


def operations(spec: Spec) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, ops_ in spec["paths"].items():
        for method, op in ops_.items():
            yield f"{method.upper()} {path}", op


def resolve(spec: Spec, schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]


def undescribed(schema: Any, where: str) -> Iterator[str]:
    """Every property, at any depth of ``schema``, whose description is missing or empty."""
    if isinstance(schema, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if not (isinstance(prop, dict) and str(prop.get("description", "")).strip()):
                yield f"{where}.{name}"
        for key, value in schema.items():
            yield from undescribed(value, f"{where}.{key}" if key != "properties" else where)
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from undescribed(value, f"{where}[{i}]")


def has_example(spec: Spec, media: dict[str, Any]) -> bool:
    if media.get("example") is not None or media.get("examples"):
        return True
    return bool(resolve(spec, media.get("schema") or {}).get("examples"))


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_every_property_of_every_schema_is_described(spec: Spec) -> None:
    missing = [
        path
        for name, schema in spec["components"]["schemas"].items()
        for path in undescribed(schema, name)
    ]
    for where, op in operations(spec):
        for media_type, media in (op.get("requestBody") or {}).get("content", {}).items():
            missing += undescribed(media.get("schema"), f"{where} body {media_type}")
    assert not missing, "properties without a description:\n" + "\n".join(missing)


def test_every_route_shows_an_example_request_and_answer(spec: Spec) -> None:
    missing = []
    for where, op in operations(spec):
        for media_type, media in (op.get("requestBody") or {}).get("content", {}).items():
            if media_type in TEXT_TYPES and not has_example(spec, media):
                missing.append(f"{where}: request {media_type}")
        answers = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        assert answers, f"{where} documents no success status"
        for status, answer in answers.items():
            for media_type, media in answer.get("content", {}).items():
                if media_type in TEXT_TYPES and not has_example(spec, media):
                    missing.append(f"{where}: {status} {media_type}")
    assert not missing, "without an example:\n" + "\n".join(missing)


def test_the_json_routes_are_all_checked(spec: Spec) -> None:
    """The test above sees the routes that matter: the bodies of the two POSTs that take JSON,
    and a JSON answer for every route but the file, picture, metrics and deletion ones."""
    bodies = {
        where
        for where, op in operations(spec)
        if "application/json" in (op.get("requestBody") or {}).get("content", {})
    }
    assert {
        "POST /v1/estimates",
        "POST /v1/estimates/{estimate_id}/evaluate",
        "POST /v1/datasets",
    } <= bodies
    json_answers = {
        where
        for where, op in operations(spec)
        for status, answer in op["responses"].items()
        if status.startswith("2") and "application/json" in answer.get("content", {})
    }
    assert len(json_answers) >= 10, sorted(json_answers)


def component_examples(spec: Spec) -> list[tuple[str, int, Any]]:
    return [
        (name, i, example)
        for name, schema in spec["components"]["schemas"].items()
        for i, example in enumerate(schema.get("examples") or [])
    ]


def model_examples(model: type[BaseModel]) -> list[Any]:
    """The examples a model declares (model_config's json_schema_extra)."""
    extra = model.model_config.get("json_schema_extra")
    return list(extra.get("examples") or []) if isinstance(extra, dict) else []


def without_nulls(value: Any) -> Any:
    """``value`` as the OpenAPI document carries it: FastAPI drops every null member of an
    object (fastapi/fastapi#5559), list items stay."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def test_the_models_that_answer_have_examples(spec: Spec) -> None:
    named = {name for name, _, _ in component_examples(spec)}
    wanted = {"Dataset", "DatasetList", "Estimate", "EstimateList", "EstimateRequest"}
    wanted |= {"EstimateResult", "EvaluateResponse", "Health", "Ready", "Problem"}
    assert wanted <= named, sorted(wanted - named)


def test_every_model_example_is_valid_for_its_model() -> None:
    """Each example is what the model takes or gives: it validates, and dumps back to itself (a
    misspelt or stale key in a model that ignores unknown keys would be lost)."""
    checked = 0
    for name, model in models().items():
        for i, example in enumerate(model_examples(model)):
            parsed = model.model_validate(example)
            dumped = parsed.model_dump(mode="json", exclude_unset=True)
            assert dumped == as_json(example), f"{name} example {i} does not round-trip"
            checked += 1
    assert checked >= 20


def test_the_document_shows_the_model_examples_and_they_fit_its_schemas(spec: Spec) -> None:
    by_name = models()
    shown = component_examples(spec)
    # The /evaluate body's schema is inlined (the route reads the body itself): its examples too.
    evaluate = spec["paths"]["/v1/estimates/{estimate_id}/evaluate"]["post"]
    inline = evaluate["requestBody"]["content"]["application/json"]["schema"]
    shown += [("EvaluateRequest", i, e) for i, e in enumerate(inline.get("examples") or [])]
    for name, i, example in shown:
        assert name in by_name, f"component {name} has examples but no model of that name"
        declared = model_examples(by_name[name])
        assert i < len(declared) and example == without_nulls(as_json(declared[i])), (name, i)
        schema = inline if name == "EvaluateRequest" else {"$ref": f"#/components/schemas/{name}"}
        validator = jsonschema.Draft202012Validator({**schema, "components": spec["components"]})
        validator.validate(example)
        validator.validate(as_json(declared[i]))


def test_the_upload_examples_are_real_uploads(spec: Spec, api: Any) -> None:
    """The upload body's examples (JSON and CSV) are accepted by the route."""
    content = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    example = content["application/json"]["example"]
    jsonschema.Draft202012Validator(content["application/json"]["schema"]).validate(example)
    assert api.post("/v1/datasets", json=example).status_code == 201
    csv = content["text/csv"]["example"]
    r = api.post("/v1/datasets", content=csv, headers={"Content-Type": "text/csv"})
    assert r.status_code == 201, r.text


def test_the_event_stream_example_is_progress_then_the_estimate(spec: Spec) -> None:
    op = spec["paths"]["/v1/estimates/{estimate_id}/events"]["get"]
    stream = op["responses"]["200"]["content"]["text/event-stream"]["example"]
    events = [block for block in stream.split("\n\n") if block.strip()]
    kinds = []
    for block in events:
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        kinds.append(fields["event"])
        data = json.loads(fields["data"])
        model = estimate_models.Progress if fields["event"] == "progress" else None
        model = model or estimate_models.Estimate
        assert model.model_validate(data).model_dump(mode="json", exclude_unset=True) == data
    assert kinds[-1] in ("result", "error") and set(kinds[:-1]) == {"progress"}


def test_the_examples_agree_with_each_other() -> None:
    """The estimate examples name the datasets of the dataset examples, and the succeeded one
    carries the result example: one story across the document."""
    ids = {d["id"] for d in datasets.DATASET_EXAMPLES}
    assert estimate_models.SOURCE_EXAMPLE in ids
    done = estimate_models.ESTIMATE_EXAMPLES[0]
    assert done["status"] == "succeeded" and done["result"] == estimate_models.RESULT_EXAMPLES[0]
    assert [e["status"] for e in estimate_models.ESTIMATE_EXAMPLES[1:]] == [
        "queued",
        "running",
        "failed",
    ]
    assert all(
        r["source"] == done["source"] and r["target"] == done["target"]
        for r in estimate_models.REQUEST_EXAMPLES
    )

"""Every operation's request body and 2xx answer carry an example in /openapi.json, a valid one."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import mailfleet_api.main  # noqa: F401 - imports every route, so every model
import pytest
from pydantic import BaseModel, ValidationError

_METHODS = {"get", "put", "post", "delete", "patch"}
_VARIANTS = ("anyOf", "oneOf")


def _lacking(document: dict[str, Any], schema: dict[str, Any], name: str = "") -> list[str]:
    """The schemas in `schema` without an example: none if it has one, else those of its parts.

    A reference is followed; an optional body (`X | None`) needs an example for each variant
    but null; an array for its items.
    """
    if "examples" in schema or "example" in schema:
        return []
    if "$ref" in schema:
        target = schema["$ref"].rsplit("/", 1)[1]
        return _lacking(document, document["components"]["schemas"][target], target)
    variants = [s for key in _VARIANTS for s in schema.get(key, []) if s.get("type") != "null"]
    if variants:
        return [lacking for s in variants for lacking in _lacking(document, s)]
    if schema.get("type") == "array" and "items" in schema:
        return _lacking(document, schema["items"])
    return [name or schema.get("title") or "an inline schema"]


def _media_lacking(document: dict[str, Any], media: dict[str, Any]) -> list[str]:
    if "example" in media or "examples" in media:
        return []
    return _lacking(document, media.get("schema", {}))


def _json_bodies(operation: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(what, media type, media) of the request body and each 2xx answer in JSON."""
    for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
        yield "request", media_type, media
    for code, answer in operation.get("responses", {}).items():
        if code.startswith("2"):
            for media_type, media in answer.get("content", {}).items():
                yield code, media_type, media


def _missing(document: dict[str, Any]) -> list[str]:
    missing = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            for what, media_type, media in _json_bodies(operation):
                lacking = _media_lacking(document, media) if media_type.endswith("json") else []
                if lacking:
                    missing.append(
                        f"{method.upper()} {path} {what} {media_type}: {', '.join(lacking)}"
                    )
    return missing


async def test_every_json_body_and_success_answer_has_an_example(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    missing = _missing(document)
    assert not missing, "no example for:\n" + "\n".join(missing)


def _api_models() -> Iterator[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    stack = list(BaseModel.__subclasses__())
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        stack += model.__subclasses__()
        if model.__module__.startswith("mailfleet_api"):
            yield model


def _examples() -> list[Any]:
    cases = []
    for model in sorted(_api_models(), key=lambda m: (m.__module__, m.__qualname__)):
        extra = model.model_config.get("json_schema_extra")
        examples = extra.get("examples") if isinstance(extra, dict) else None
        if not isinstance(examples, list):
            continue
        cases += [
            pytest.param(model, example, id=f"{model.__qualname__}-{n}")
            for n, example in enumerate(examples)
        ]
    return cases


@pytest.mark.parametrize(("model", "example"), _examples())
def test_every_example_is_valid_for_its_model(model: type[BaseModel], example: Any) -> None:
    # As JSON and strictly: a client sending the example as it is shown must be understood,
    # and an answer shaped like it must match the documented schema (schemathesis checks).
    # A model inheriting its parent's example without overriding it fails here too.
    try:
        model.model_validate_json(json.dumps(example), strict=True)
    except ValidationError as exc:
        pytest.fail(f"the example of {model.__qualname__} is invalid: {exc}")


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def test_a_model_without_example_is_reported() -> None:
    document = {
        "paths": {"/x": {"post": {"requestBody": _json(_ref("A")), "responses": {
            "200": _json({"type": "object"}),
        }}}},
        "components": {"schemas": {"A": {"type": "object", "examples": [{}]}}},
    }  # fmt: skip
    assert _missing(document) == ["POST /x 200 application/json: an inline schema"]


def test_optional_bodies_and_arrays_are_looked_into() -> None:
    document = {
        "paths": {"/x": {"put": {
            "requestBody": _json({"anyOf": [_ref("A"), {"type": "null"}]}),
            "responses": {
                "200": _json({"type": "array", "items": _ref("B")}),
                "202": _json({"oneOf": [_ref("A"), _ref("C")]}),
                "404": _json({"type": "object"}),
            },
        }}},
        "components": {"schemas": {
            "A": {"type": "object", "examples": [{}]},
            "B": {"type": "object"},
            "C": {"type": "object"},
        }},
    }  # fmt: skip
    assert _missing(document) == [
        "PUT /x 200 application/json: B",
        "PUT /x 202 application/json: C",
    ]

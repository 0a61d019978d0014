"""Domain errors of the API and the one place that maps them, and every other error, to HTTP.

Every error answer is an RFC 9457 problem document (``application/problem+json``): ``type``,
``title``, ``status``, ``detail``, ``instance``, and ``errors`` for invalid requests. A problem
never echoes the request's values: a 20 MB body or a rejected password is not sent back.
"""

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from mailfleet_common.errors import MailfleetError
from mailfleet_common.templating import InvalidTemplateError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A validation problem lists at most this many fields, each message cut to this length.
MAX_FIELD_ERRORS = 50
_MAX_MESSAGE_CHARS = 300


class ApiError(MailfleetError):
    status_code = status.HTTP_400_BAD_REQUEST
    headers: ClassVar[dict[str, str] | None] = None


class UnauthenticatedError(ApiError):
    """No credentials, or credentials that are unknown, expired or revoked."""

    status_code = status.HTTP_401_UNAUTHORIZED
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ApiError):
    """The caller's role does not allow this."""

    status_code = status.HTTP_403_FORBIDDEN


class NotFoundError(ApiError):
    status_code = status.HTTP_404_NOT_FOUND


class ConflictError(ApiError):
    """The request is valid but clashes with the current state (duplicate, wrong status)."""

    status_code = status.HTTP_409_CONFLICT


class InvalidError(ApiError):
    """The request is well formed but its content is unacceptable."""

    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT


class TooLargeError(ApiError):
    status_code = status.HTTP_413_CONTENT_TOO_LARGE


class UnsupportedMediaTypeError(ApiError):
    """The body is not of a content type the route reads."""

    status_code = status.HTTP_415_UNSUPPORTED_MEDIA_TYPE


class TooManyRequestsError(ApiError):
    """The caller is throttled; ``retry_after`` says in how many seconds to try again."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


_FIELD_EXAMPLE: dict[str, Any] = {
    "loc": ["body", "recipients", 3, "email"],
    "msg": "Field required",
    "type": "missing",
}


class ProblemField(BaseModel):
    """One reason a request is invalid: where (``loc``), why (``msg``) and its kind."""

    model_config = ConfigDict(json_schema_extra={"examples": [_FIELD_EXAMPLE]})

    loc: list[str | int] = Field(description='Where: e.g. ["body", "recipients", 3, "email"].')
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document: the body of every error answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "no campaign 0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
                    "instance": "/api/campaigns/0b6c2f4e-8d1a-4e57-9c3b-5a7d2e9f1c48",
                },
                {
                    "type": "about:blank",
                    "title": "Unprocessable Content",
                    "status": 422,
                    "detail": "the request is invalid (1 error): "
                    "body.recipients.3.email: Field required",
                    "instance": "/api/queue/enqueue",
                    "errors": [_FIELD_EXAMPLE],
                },
            ]
        }
    )

    type: str = Field(default="about:blank", description="about:blank: see title and status.")
    title: str = Field(description="The HTTP status phrase.")
    status: int
    detail: str = Field(description="What went wrong, for a human.")
    instance: str = Field(description="The path of the request.")
    errors: list[ProblemField] | None = Field(
        default=None,
        description=f"Invalid requests (422): each invalid field, at most {MAX_FIELD_ERRORS}.",
    )


def problem_response(
    request: Request,
    status_code: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
    errors: list[ProblemField] | None = None,
) -> JSONResponse:
    problem = Problem(
        title=HTTPStatus(status_code).phrase,
        status=status_code,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _loc(parts: Any) -> list[str | int]:
    return [p if isinstance(p, int) else str(p)[:_MAX_MESSAGE_CHARS] for p in parts]


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
    headers = exc.headers
    if isinstance(exc, TooManyRequestsError):
        headers = {"Retry-After": str(exc.retry_after)}
    return problem_response(request, exc.status_code, str(exc), headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    # Only where and why: pydantic's "input" (and "ctx", which may quote it) stay out, so a
    # rejected secret or a huge value never comes back.
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only
    found = exc.errors()
    errors = [
        ProblemField(
            loc=_loc(error.get("loc", ())),
            msg=str(error.get("msg", ""))[:_MAX_MESSAGE_CHARS],
            type=str(error.get("type", "invalid")),
        )
        for error in found[:MAX_FIELD_ERRORS]
    ]
    shown = "" if len(found) <= MAX_FIELD_ERRORS else f", the first {MAX_FIELD_ERRORS} listed"
    where = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:3])
    count = f"{len(found)} error{'' if len(found) == 1 else 's'}"
    detail = f"the request is invalid ({count}{shown}): {where}"
    return problem_response(request, status.HTTP_422_UNPROCESSABLE_CONTENT, detail, errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own: an unknown path (404), a method not allowed (405, with Allow), a body
    # over the size limit (413).
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for it only
    return problem_response(request, exc.status_code, str(exc.detail), exc.headers)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # A value PostgreSQL cannot store (bad encoding, out of range) that the schemas let
    # through: the caller's input, so a 422. The driver's text stays in the log.
    log.info("a request value was refused by the database: %s", exc)
    detail = "a value of the request is out of range or cannot be stored"
    return problem_response(request, status.HTTP_422_UNPROCESSABLE_CONTENT, detail)


async def _template_invalid(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(request, status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs and re-raises the exception after this answer; nothing of it is shown.
    detail = "an unexpected error occurred; it has been logged"
    return problem_response(request, status.HTTP_500_INTERNAL_SERVER_ERROR, detail)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(InvalidTemplateError, _template_invalid)
    app.add_exception_handler(asyncpg.DataError, _data_error)
    app.add_exception_handler(Exception, _unexpected)


_PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"
_CHALLENGE = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
_COUNT = {"type": "integer", "minimum": 0}
# draft-ietf-httpapi-ratelimit-headers; absent while the rate-limit storage is unreachable.
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {"description": "Requests allowed in the window.", "schema": _COUNT},
    "RateLimit-Remaining": {"description": "Requests left in the window.", "schema": _COUNT},
    "RateLimit-Reset": {"description": "Seconds until the window ends.", "schema": _COUNT},
    "RateLimit-Policy": {
        "description": 'Each policy counted: `3000;w=60;name="default"`.',
        "schema": {"type": "string"},
    },
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": _COUNT,
    }
}
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _error_answers(operation: dict[str, Any]) -> dict[int, str]:
    """The error answers an operation can give, from what its document says it needs."""
    parameters = {p.get("in") for p in operation.get("parameters", [])}
    has_body = "requestBody" in operation
    changes_state = operation.get("_method") != "get"
    answers = {500: "An unexpected error; nothing of it is shown."}
    secured = bool(operation.get("security"))
    if secured:
        answers[401] = "No credentials, or unknown, expired or revoked ones."
        answers[403] = "The caller's role does not allow this."
        if changes_state:
            answers[409] = "The request clashes with the current state."
        answers[429] = "Over the credential's rate limit: wait Retry-After seconds."
    if "path" in parameters or (secured and changes_state and has_body):
        answers[404] = "Something the request names does not exist."
    if has_body:
        answers[400] = "The body cannot be parsed: not JSON, or not UTF-8."
        answers[413] = "The body is larger than this route accepts."
        answers[415] = "The body is not of the content type this route reads."
    if parameters or has_body:
        answers[422] = "The request is invalid: see errors."
    return answers


def _document_problems(document: dict[str, Any]) -> None:
    for path_item in document.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for code, description in _error_answers({**operation, "_method": method}).items():
                responses.setdefault(str(code), {"description": description})
            if "401" in responses:
                responses["401"].setdefault("headers", _CHALLENGE)
            if operation.get("security"):
                # Every answer after authentication is counted, and says so.
                for code, response in responses.items():
                    if code not in ("401", "500"):
                        response.setdefault("headers", {}).update(RATE_LIMIT_HEADERS)
                responses["429"]["headers"].update(_RETRY_AFTER)
            for code, response in responses.items():
                content = response.get("content", {})
                refs = [c.get("schema", {}).get("$ref") for c in content.values()]
                if code[0] in "45" and (not content or _FASTAPI_VALIDATION in refs):
                    response["content"] = _PROBLEM_CONTENT
                    if _FASTAPI_VALIDATION in refs:
                        response["description"] = _error_answers({"requestBody": 1})[422]
    definitions = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(definitions.pop("$defs", {}))
    schemas["Problem"] = definitions


def document_errors(app: FastAPI) -> None:
    """Document every operation's error answers as problems, routes added later included.

    Derived from the generated document itself, when it is first built: credentials needed
    (401, 403, 429 with Retry-After and the RateLimit fields on every answer after 401; 409 if
    it changes state), path parameters (404), a body (400, 413, 415), anything validated (422),
    500 everywhere. Error answers a route declares itself (login's 401 and
    429) get the problem schema too.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_problems(build())
        return build()

    app.openapi = openapi  # type: ignore[method-assign]

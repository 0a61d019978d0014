"""Domain errors of the API and the one place that maps them to HTTP responses."""

from typing import ClassVar

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from mailfleet_common.errors import MailfleetError
from mailfleet_common.templating import InvalidTemplateError


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


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)  # noqa: S101 - registered for ApiError only
    return JSONResponse({"detail": str(exc)}, exc.status_code, headers=exc.headers)


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    # A value PostgreSQL cannot store (bad encoding, out of range) that the schemas let
    # through: still the caller's input, so a 422 with PostgreSQL's reason, not a 500.
    return JSONResponse({"detail": f"invalid value: {exc}"}, status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _template_invalid(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status.HTTP_422_UNPROCESSABLE_CONTENT)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(InvalidTemplateError, _template_invalid)
    app.add_exception_handler(asyncpg.DataError, _data_error)

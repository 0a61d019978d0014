"""Gmail API errors in Google's JSON shape (the Gmail guide "Resolve errors")."""

from dataclasses import dataclass

from starlette.responses import JSONResponse


@dataclass(frozen=True)
class GmailError:
    """One error answer: HTTP code, google.rpc status, and the legacy `errors[]` entry."""

    code: int
    status: str
    reason: str
    message: str
    domain: str = "global"

    def response(self) -> JSONResponse:
        """The error as Google sends it."""
        detail: dict[str, str] = {
            "message": self.message,
            "domain": self.domain,
            "reason": self.reason,
        }
        headers = {}
        if self.code == 401:
            detail |= {"location": "Authorization", "locationType": "header"}
            headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
        body = {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [detail],
                "status": self.status,
            }
        }
        return JSONResponse(body, status_code=self.code, headers=headers)


INVALID_CREDENTIALS = GmailError(401, "UNAUTHENTICATED", "authError", "Invalid Credentials")
INSUFFICIENT_SCOPES = GmailError(
    403, "PERMISSION_DENIED", "insufficientPermissions", "Insufficient Permission"
)
USER_RATE_LIMIT = GmailError(
    403, "PERMISSION_DENIED", "userRateLimitExceeded", "User Rate Limit Exceeded", "usageLimits"
)
RATE_LIMIT = GmailError(
    403, "PERMISSION_DENIED", "rateLimitExceeded", "Rate Limit Exceeded", "usageLimits"
)
DAILY_LIMIT = GmailError(
    403, "PERMISSION_DENIED", "dailyLimitExceeded", "Daily Limit Exceeded", "usageLimits"
)
DAILY_SENDING_LIMIT = GmailError(
    403, "PERMISSION_DENIED", "dailyLimitExceeded", "Daily sending quota exceeded", "usageLimits"
)
TOO_MANY_REQUESTS = GmailError(
    429,
    "RESOURCE_EXHAUSTED",
    "rateLimitExceeded",
    "Too many concurrent requests for user",
    "usageLimits",
)
BACKEND_ERROR = GmailError(500, "INTERNAL", "backendError", "Backend Error")
NOT_FOUND = GmailError(404, "NOT_FOUND", "notFound", "Requested entity was not found.")
FAILED_PRECONDITION = GmailError(
    400, "FAILED_PRECONDITION", "failedPrecondition", "Precondition check failed."
)
DELEGATION_DENIED = GmailError(403, "PERMISSION_DENIED", "forbidden", "Delegation denied")


def invalid_argument(message: str) -> GmailError:
    """A 400 about the request's content."""
    return GmailError(400, "INVALID_ARGUMENT", "invalidArgument", message)


def user_rate_limited(status_code: int, retry_after: str) -> GmailError:
    """Per-user quota spent: 429 RESOURCE_EXHAUSTED or 403, both naming the time to retry."""
    message = f"User-rate limit exceeded.  Retry after {retry_after}"
    if status_code == 429:
        return GmailError(429, "RESOURCE_EXHAUSTED", "rateLimitExceeded", message, "usageLimits")
    return GmailError(403, "PERMISSION_DENIED", "userRateLimitExceeded", message, "usageLimits")

"""The HTTP side of the client commands: options, one API client, errors as exit codes."""

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import httpx
import typer
from mailfleet_common.settings import HttpSettings

from mailfleet_api.client.render import Output

DEFAULT_API_URL = f"http://127.0.0.1:{HttpSettings().port}"
# Exit codes besides 0 (done), 2 (bad usage, click's own) and 130 (interrupted).
EXIT_API_ERROR = 1
EXIT_UNREACHABLE = 3
# A 429 is waited out this many times (Retry-After, at most MAX_WAIT_S each) before giving up.
MAX_RETRIES = 5
MAX_WAIT_S = 60.0

ApiUrl = Annotated[
    str,
    typer.Option(
        "--api-url", envvar="MAILFLEET_API_URL", help="Where the API answers.", show_envvar=True
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="MAILFLEET_API_KEY",
        help="An API key (mailfleet create-api-key, or POST /api/admin/api-keys).",
        show_default=False,
        show_envvar=True,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


class ApiProblemError(Exception):
    """The API answered with an error: its problem document (RFC 9457), or what stood for it."""

    def __init__(self, status: int, document: dict[str, Any]) -> None:
        super().__init__(f"{status}: {document.get('detail', '')}")
        self.status = status
        self.document = document

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiProblemError":
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            # Not the API's own answer (a proxy's page, say): its first words stand for it.
            document = {
                "title": response.reason_phrase,
                "status": response.status_code,
                "detail": " ".join(response.text.split())[:200] or response.reason_phrase,
            }
        return cls(response.status_code, document)

    def describe(self) -> str:
        title = self.document.get("title") or "error"
        detail = str(self.document.get("detail", ""))
        lines = [f"error {self.status} {title}: {detail}".rstrip(": ")]
        for field in self.document.get("errors") or []:
            where = ".".join(str(part) for part in field.get("loc", []))
            reason = f"{where}: {field.get('msg', '')}"
            if reason not in detail:  # the detail names the first few already
                lines.append(f"  {reason}")
        return "\n".join(lines)


class ApiUnreachableError(Exception):
    """No answer: nothing listens there, the name does not resolve, or it timed out."""

    def __init__(self, url: str, cause: httpx.TransportError) -> None:
        reason = str(cause) or type(cause).__name__
        if isinstance(cause, httpx.TimeoutException):
            reason = f"no answer in time ({type(cause).__name__})"
        super().__init__(f"cannot reach the API at {url}: {reason}")
        self.url = url


class ApiClient:
    """Calls to one API with one key; answers are decoded JSON, errors are raised."""

    def __init__(self, api_url: str, api_key: str, timeout_s: float = 60.0) -> None:
        self.url = api_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "mailfleet-cli"},
            timeout=timeout_s,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The decoded answer of a 2xx; ApiProblemError otherwise, after waiting out 429s."""
        sent_headers = dict(headers or {})
        if body is not None:
            content = json.dumps(body).encode()
        if content is not None:
            sent_headers["Content-Type"] = "application/json"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in range(MAX_RETRIES + 1):
            try:
                response = self._http.request(
                    method, path, params=query, content=content, headers=sent_headers
                )
            except httpx.TransportError as exc:
                raise ApiUnreachableError(self.url, exc) from None
            if response.status_code != 429 or attempt == MAX_RETRIES:
                break
            time.sleep(_retry_after(response))
        if not response.is_success:
            raise ApiProblemError.from_response(response)
        return response.json() if response.content else None

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body={} if body is None else body)


def _retry_after(response: httpx.Response) -> float:
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.1), MAX_WAIT_S)


@contextlib.contextmanager
def session(api_url: str, api_key: str | None, as_json: bool) -> Iterator[tuple[ApiClient, Output]]:
    """A client and an output; API errors and unreachable APIs end the command cleanly."""
    output = Output(as_json)
    if not api_key:
        output.fail("give an API key with --api-key or MAILFLEET_API_KEY", code=2)
    client = ApiClient(api_url, api_key or "")
    try:
        yield client, output
    except ApiProblemError as problem:
        output.problem(problem.describe(), problem.document)
        raise typer.Exit(EXIT_API_ERROR) from None
    except ApiUnreachableError as unreachable:
        output.fail(str(unreachable), code=EXIT_UNREACHABLE)
    finally:
        client.close()


def pages(client: ApiClient, path: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every page of a list, following next_cursor (or offset and total, where still used)."""
    query = dict(params)
    while True:
        page: dict[str, Any] = client.get(path, query)
        yield page
        if page.get("next_cursor"):
            query["cursor"] = page["next_cursor"]
        elif (
            "total" in page
            and page.get("items")
            and page["offset"] + len(page["items"]) < page["total"]
        ):
            query["offset"] = page["offset"] + len(page["items"])
        else:
            return


def show(api_url: str, api_key: str | None, as_json: bool, path: str, title: str) -> None:
    """GET one resource and print it: as received with --json, else as tables."""
    with session(api_url, api_key, as_json) as (client, output):
        document = client.get(path)
        if as_json:
            output.json(document)
        else:
            output.document(document, title=title)

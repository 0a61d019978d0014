"""The tracker benchmark's baseline: a raw ASGI app that returns the pixel and does nothing else.

Served by the same uvicorn, loop and HTTP parser as the tracker:

    python -m bench.bare --port 8100
"""

import argparse
from typing import Any

import uvicorn
from mailfleet_tracker.main import UVICORN_OPTIONS

# The tracker's pixel: a transparent 1x1 GIF, 43 bytes.
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(GIF)).encode()),
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
]
_START = {"type": "http.response.start", "status": 200, "headers": _HEADERS}
_BODY = {"type": "http.response.body", "body": GIF}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(_START)
    await send(_BODY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The tracker's own uvicorn options: the same server, loop and HTTP parser.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        lifespan="off",
        log_config=None,
        access_log=False,
        **UVICORN_OPTIONS,
    )


if __name__ == "__main__":
    main()

"""The gateway's one ASGI app: /healthz, /metrics, and the routes channels add (webhooks)."""

from __future__ import annotations

import contextlib
import hmac
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.errors import KartablError
from gateway.settings import Secret

Health = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def build_app(health: Health, metrics: Callable[[], Awaitable[bytes]],
              routes: Sequence[BaseRoute] = ()) -> Starlette:
    async def healthz(_: Request) -> Response:
        ok, body = await health()
        return JSONResponse(body, status_code=200 if ok else 503)

    async def prometheus(_: Request) -> Response:
        return Response(await metrics(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        *routes,
    ])


def secret_matches(given: str, expected: Secret | None) -> bool:
    """A webhook's secret (a path segment, a header) against the configured one, in constant time; no
    configured secret matches nothing."""
    wanted = expected.reveal() if expected else ""
    return bool(wanted) and hmac.compare_digest(given.encode(), wanted.encode())


class TooLarge(Exception):
    """A request body over the route's limit."""


async def body_within(request: Request, limit: int) -> bytes:
    """The request's body, read no further than `limit` bytes: TooLarge past it, whether the length was
    declared (Content-Length) or not (a chunked body is counted as it arrives)."""
    if int(request.headers.get("content-length") or 0) > limit:
        raise TooLarge(f"over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def caller(request: Request) -> str:
    """Who called, for a log line about a refused webhook."""
    return request.client.host if request.client else "an unknown address"


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the gateway's event loop; the runtime, not uvicorn, handles SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound socket for the HTTP server (port 0 picks a free one); a clear error if it is taken."""
    # IPPROTO_TCP named: only then does asyncio set TCP_NODELAY on accepted connections (without it every
    # answer waited ~40 ms for the peer's delayed ACK).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise KartablError(f"HTTP: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    # Listening now, not when uvicorn gets to it: a client that read "listening" may connect at once.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock

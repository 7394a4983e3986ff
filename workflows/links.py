"""The satisfaction survey by link: a signed address per ticket in the resolution email, and the page
it opens, where one press of a score records it.

The link only shows the page: mail scanners and link previews open links on their own, so the score
is recorded by the page's form (a POST), never by the GET. The signature is an HMAC of the ticket's
number under `http.link_secret`; a link with a wrong one is a 404, as is a ticket that was never asked.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.domain import parse_ticket_ref, ticket_ref
from gateway.errors import SettingsError
from gateway.settings import Secret
from workflows.survey import SCORES

PAGES_DIR = Path(__file__).with_name("pages")
_SIGNATURE_BYTES = 16
_MAX_FORM_BYTES = 1024  # the form has one field of one digit

#: What recording a score answers: "recorded", "already" (an earlier score stands), or "closed" (never asked).
Record = Callable[[int, int], Awaitable[str]]
#: The ticket's language and its score so far, or None when its survey was never sent.
Lookup = Callable[[int], Awaitable[tuple[str | None, int | None] | None]]


class SurveyLinks:
    """Signs survey links and serves the page they open."""

    def __init__(self, public_url: str, secret: Secret) -> None:
        if not public_url.startswith(("https://", "http://")):
            raise SettingsError(f"settings: http.public_url must start with https:// or http://, got {public_url!r}")
        self.base = public_url.rstrip("/")
        self._key = secret.reveal().encode()

    def url(self, ticket_id: int) -> str:
        return f"{self.base}/survey/{ticket_ref(ticket_id)}/{self._sign(ticket_id)}"

    def _sign(self, ticket_id: int) -> str:
        digest = hmac.new(self._key, f"survey:{ticket_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:_SIGNATURE_BYTES]).decode().rstrip("=")

    def ticket_of(self, ref: str, signature: str) -> int | None:
        """The ticket a link is for, or None when it is not one we signed."""
        ticket_id = parse_ticket_ref(ref)
        if ticket_id is None or ref != ticket_ref(ticket_id):
            return None
        return ticket_id if hmac.compare_digest(signature.encode(), self._sign(ticket_id).encode()) else None

    def routes(self, lookup: Lookup, record: Record) -> list[BaseRoute]:
        async def page(request: Request) -> Response:
            ticket_id = self.ticket_of(request.path_params["ref"], request.path_params["signature"])
            found = await lookup(ticket_id) if ticket_id is not None else None
            if ticket_id is None or found is None:
                return _page("missing", "fa", status=404)
            language, score = found
            if request.method == "GET":
                return _page("ask" if score is None else "already", language, ref=ticket_ref(ticket_id),
                             chosen=_score(request.query_params.get("score")), score=score)
            if int(request.headers.get("content-length") or 0) > _MAX_FORM_BYTES:
                return _page("ask", language, ref=ticket_ref(ticket_id), chosen=None, score=None,
                             status=413, invalid=True)
            # A urlencoded form of one field: read plainly (Starlette's form parser needs python-multipart).
            form = urllib.parse.parse_qs((await request.body())[:_MAX_FORM_BYTES].decode("latin-1"))
            given = _score((form.get("score") or [""])[0])
            if given is None:
                return _page("ask", language, ref=ticket_ref(ticket_id), chosen=None, score=None,
                             status=400, invalid=True)
            outcome = await record(ticket_id, given)
            return _page("thanks" if outcome == "recorded" else outcome, language, ref=ticket_ref(ticket_id),
                         score=given if outcome == "recorded" else score)

        return [Route("/survey/{ref}/{signature}", page, methods=["GET", "POST"])]


def _score(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and int(value) in SCORES else None


@functools.cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(PAGES_DIR), autoescape=select_autoescape(["html", "j2"]))


def _page(state: str, language: str | None, *, status: int = 200, **values: object) -> HTMLResponse:
    language = "en" if language == "en" else "fa"
    html = _environment().get_template("survey.html.j2").render(
        state=state, lang=language, rtl=language == "fa", scores=list(SCORES), **values)
    # No caching and no referrer: the link is the customer's key to this page.
    return HTMLResponse(html, status_code=status, headers={
        "Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"})

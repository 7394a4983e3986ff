"""Kavenegar's REST API through the `kavenegar` package: a timeout, kept-alive connections, errors mapped
to the gateway's, and the API key (which sits inside every URL) in no message, log line or repr."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import kavenegar
import requests

from gateway.errors import AuthError, ChannelError, PermanentError, TransientError

#: Kavenegar's codes that stop all sending until an operator acts: no credit, this IP not allowed,
#: the account disabled, the API key refused.
HALTING = {418: "no credit left", 407: "this server's IP address is not allowed",
           401: "the account is disabled", 403: "the API key is not valid"}
#: Codes that fail the one message for good: bad receptor, bad sender line, empty or too long text,
#: too many receptors; and requests Kavenegar will never accept as they are.
PERMANENT = {411, 412, 413, 414, 400, 406, 415, 417, 419, 420, 422, 424, 426, 428, 431, 432, 501}
#: Codes worth retrying: Kavenegar busy (409), too many requests (451), its own failures (5xx).
TRANSIENT = {409, 451}
#: Messages a page of the paged inbox holds at most (Kavenegar's documented page size).
INBOX_PAGE = 200
_CODE = re.compile(rb"APIException\[(\d+)\]\s*(.*)", re.DOTALL)


class _Api(kavenegar.KavenegarAPI):
    """The package's client with what its newest release (1.1.2) lacks: a timeout (without one a hung
    server holds the call for ever) and a session per thread that keeps its TLS connection (the
    package opens one per call). The request and the answer are the package's own: a form POST to
    https://host/v1/KEY/scope/method.json, and `entries` out of `{"return": {...}, "entries": ...}`."""

    def __init__(self, api_key: str, host: str, timeout: float) -> None:
        super().__init__(api_key)
        self.host = host
        self.timeout = timeout
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"KavenegarAPI(host={self.host!r}, key=[secret])"

    __str__ = __repr__

    def _request(self, action: str, method: str, params: Mapping[str, Any] | None = None) -> Any:
        url = f"https://{self.host}/{self.version}/{self.apikey}/{action}/{method}.json"
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        try:
            content = session.post(url, headers=self.headers, data=dict(params or {}), timeout=self.timeout).content
        except requests.exceptions.RequestException as exc:
            raise kavenegar.HTTPException(exc) from None
        try:
            answer = json.loads(content.decode("utf-8"))
            status, text = answer["return"]["status"], answer["return"]["message"]
        except (ValueError, KeyError, TypeError) as exc:
            raise kavenegar.HTTPException(f"not an answer of Kavenegar's ({exc})") from None
        if status != 200:
            raise kavenegar.APIException(f"APIException[{status}] {text}".encode())
        return answer["entries"]


class KavenegarClient:
    """The calls the SMS channel makes. Synchronous, like the package: run them off the event loop."""

    def __init__(self, api_key: str, host: str, timeout: float) -> None:
        self._api = _Api(api_key, host, timeout)
        self._key = api_key

    def __repr__(self) -> str:
        return repr(self._api)

    def send(self, receptor: str, text: str, sender: str, localid: str) -> dict[str, Any]:
        return self._call(self._api.sms_send, {"receptor": receptor, "message": text, "sender": sender,
                                               "localid": localid})[0]

    def by_localid(self, localid: str) -> dict[str, Any] | None:
        """The message sent with `localid`, or None when Kavenegar has none (status 100)."""
        found = self._call(self._api.sms_statuslocalmessageid, {"localid": localid})
        entry = found[0] if found else None
        if not entry or int(entry.get("status", 100)) == 100 or not int(entry.get("messageid") or 0):
            return None
        return entry

    def status(self, message_ids: Sequence[str]) -> list[dict[str, Any]]:
        return self._call(self._api.sms_status, {"messageid": ",".join(message_ids)})

    def receive(self, line: str) -> list[dict[str, Any]]:
        """Unread messages to `line`, which Kavenegar marks read as it answers."""
        return self._call(self._api.sms_receive, {"linenumber": line, "isread": "0"}) or []

    def read_inbox(self, line: str, page: int) -> list[dict[str, Any]]:
        """One page of the messages already read (the last two days), for the reconcile."""
        return self._call(lambda params: self._api._request("sms", "inboxpaged", params),
                          {"linenumber": line, "isread": "1", "pagenumber": str(page)}) or []

    def _call(self, method: Any, params: Mapping[str, Any]) -> Any:
        try:
            return method(dict(params))
        except (kavenegar.APIException, kavenegar.HTTPException) as exc:
            raise failure(exc, self._key) from None


def failure(exc: Exception, api_key: str) -> ChannelError:
    """The gateway's error for what the package raised, the API key blotted out of its text."""
    if isinstance(exc, kavenegar.APIException):
        raw = exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else str(exc).encode()
        found = _CODE.match(raw)
        code = int(found.group(1)) if found else 0
        detail = found.group(2).decode("utf-8", "replace").strip() if found else repr(raw)
        text = redact(f"Kavenegar {code}: {detail}", api_key)
        if code in HALTING:
            return AuthError(f"{text} ({HALTING[code]})")
        if code in TRANSIENT or code >= 500:
            return TransientError(text)
        return PermanentError(text)
    return TransientError(redact(f"Kavenegar unreachable: {exc}", api_key))


def redact(text: str, api_key: str) -> str:
    return text.replace(api_key, "[secret]") if api_key else text

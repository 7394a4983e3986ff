"""The admin API fuzzed against its own OpenAPI document with schemathesis: every operation, in-process over
ASGI on a seeded SQLite database, with valid and invalid input, every answer checked against the document
by all of schemathesis's default checks; the mutating routes also on real rows, and every route's 401."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import settings
from schemathesis.config import SchemathesisConfig
from starlette.applications import Starlette

from channels.loopback import LoopbackChannel
from gateway.api import openapi_document
from gateway.compose import build_runtime
from gateway.customers import merge
from gateway.domain import ChannelKind, JobState, ticket_ref
from gateway.http import build_app
from gateway.runtime import Runtime
from gateway.schema import jobs
from gateway.settings import HttpSettings, Secret, Settings, WorkflowSettings
from gateway.staff import add_agent, add_department
from tests.conftest import RecordingDesk, eventually, inbound, make_settings
from tests.test_api import WORKFLOW

TOKEN = "admin-token-for-the-schema-tests-42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclasses.dataclass(frozen=True)
class Seed:
    """The ids of what `_seed` wrote."""

    tickets: tuple[int, ...]
    customers: tuple[int, ...]
    agents: tuple[int, ...]
    merge_event: int
    dead_job: int
    pending_job: int


def _settings(tmp_path: Path, db_url: str | None = None) -> Settings:
    rules = tmp_path / "workflows.toml"
    rules.write_text(WORKFLOW, encoding="utf-8")
    return make_settings(db_url or f"sqlite+aiosqlite:///{tmp_path / 'kartabl.db'}", tmp_path,
                         http=HttpSettings(enabled=False, admin_token=Secret(TOKEN)),
                         workflows=WorkflowSettings(file=str(rules)))


def _runtime(settings: Settings) -> Runtime:
    return build_runtime(settings, channels={ChannelKind.LOOPBACK: LoopbackChannel()}, desks=[RecordingDesk()])


async def _seed(settings: Settings) -> Seed:
    """A small desk, written by a running gateway: departments, agents, customers on every channel with
    tickets in Persian and English (routed by the rules), a merge to undo, a dead job and a pending one."""
    runtime = _runtime(settings)
    await runtime.start()
    try:
        db = runtime.db
        await add_department(db, "billing", title="مالی")
        await add_department(db, "support", title="پشتیبانی", strategy="round_robin")
        sara = await add_agent(db, "سارا", telegram_user_id=11, username="sara", is_lead=True,
                               department_names=("billing", "support"))
        reza = await add_agent(db, "Reza", telegram_user_id=12, department_names=("support",))
        delivered = [await runtime.deliver(message) for message in (
            inbound("m-1", "email:sara@example.ir", "فاکتور من اشتباه است", subject="صورتحساب ۴۲"),
            inbound("m-2", "phone:09121234567", "سفارشم نرسید", channel=ChannelKind.SMS),
            inbound("m-3", "telegram:777", "سلام، کمک می‌خواهم", channel=ChannelKind.TELEGRAM,
                    also_known_as=("phone:09351234567",)),
            inbound("m-4", "email:reza@example.ir", "hello, my order is late", subject="Order 17"),
            inbound("m-5", "email:old@example.ir", "invoice please"),
        )]
        await runtime.tickets.assign(delivered[0].ticket_id, sara, actor="agent:1")
        now = dt.datetime.now(dt.UTC)
        later = now + dt.timedelta(days=1)

        def work(conn: sa.Connection) -> tuple[int, int, int]:
            merged = merge(conn, delivered[3].customer_id, delivered[4].customer_id, actor="test", now=now)
            dead = runtime.queue.enqueue(conn, "test.never", {"ticket_id": delivered[0].ticket_id}, due_at=later)
            conn.execute(sa.update(jobs).where(jobs.c.id == dead).values(
                state=JobState.DEAD, attempts=12, last_error="کاوه‌نگار: خط ارسال مسدود است"))
            return merged.event_id, dead, runtime.queue.enqueue(conn, "test.never", {"n": 2}, due_at=later)
        merge_event, dead, pending = await db.run_write(work)
        # The rules have routed every ticket: only jobs due later (SLA steps, the two above) are left.
        await eventually(lambda: runtime.queue.list(JobState.PENDING, limit=200),
                         lambda waiting: all(job.due_at > now for job in waiting))
    finally:
        await runtime.stop()
    return Seed(tickets=tuple(d.ticket_id for d in delivered), customers=tuple(d.customer_id for d in delivered),
                agents=(sara, reza), merge_event=merge_event, dead_job=dead, pending_job=pending)


class _SeededApp:
    """The ASGI app schemathesis sends every case to: it passes each request on to the seeded app of the
    test running now. Schemathesis binds operations to an app when tests are collected; the seeded
    database exists only once a test runs (in its tmp path)."""

    def __init__(self) -> None:
        self.app: Starlette | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the gateway's app has nothing to start or stop
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if self.app is None:
            raise RuntimeError("no seeded app: the test must ask for a seeded fixture")
        await self.app(scope, receive, send)


@contextlib.contextmanager
def _seeded(tmp_path: Path, db_url: str | None = None) -> Iterator[tuple[Starlette, Seed]]:
    """The gateway's ASGI app over a seeded database (SQLite unless `db_url`), built by the composition
    root and never started: schemathesis runs the app in an event loop of its own, and no worker changes
    rows under it."""
    settings = _settings(tmp_path, db_url)
    seed = asyncio.run(_seed(settings))
    runtime = _runtime(settings)
    before, SEEDED.app = SEEDED.app, build_app(runtime.health, runtime.render_metrics, runtime._routes)
    try:
        yield SEEDED.app, seed
    finally:
        SEEDED.app = before
        asyncio.run(runtime.db.dispose())


#: Operations whose input has rules JSON Schema cannot state, each answered 422 with the reason: a day
#: that is not in the calendar, or a report period longer than 400 days (since/until); an address that
#: does not parse (kind:value, a sender read by its channel); a customer merged into itself; and a
#: workflow file that is not valid, which is validate's answer rather than a refusal. Schema-valid input
#: may get 422 there and nowhere else; every other check runs on them as on the rest.
SEMANTIC_422 = ["listTickets", "listCustomers", "mergeCustomer", "splitCustomer", "validateRules", "dryRun",
                "getReport"]
CONFIG = SchemathesisConfig.from_dict({
    "operations": [{"include-operation-id": SEMANTIC_422, "checks": {"positive_data_acceptance": {
        "expected-statuses": ["2xx", "401", "404", "409", "422"]}}}],
})
SEEDED = _SeededApp()
#: The document as the product writes it (a test below checks the app serves exactly this), bound to the
#: seeded app as `from_asgi` binds the app it loaded the document from.
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)
schema.app = SEEDED
# The token goes with every case (AUTH); the answers without it or with a wrong one are the 401 test's
# (and the ignored_auth check's).
schema.config.generation.update(with_security_parameters=False)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Starlette]:
    """One seeded database for the fuzzing: what a merge or a retry changed is there for the operations
    fuzzed after it."""
    with _seeded(tmp_path_factory.mktemp("fuzzed")) as (seeded, _):
        yield seeded


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Seed]:
    with _seeded(tmp_path) as (_, seed):
        yield seed


def _call(method: str, path: str, expect: int, *, body: Any = None, query: dict[str, str] | None = None,
          **parameters: Any) -> Any:
    """One case built by hand (a body as JSON), sent with the token and held to the same checks as a
    generated one."""
    given: dict[str, Any] = {"path_parameters": parameters, "query": query}
    if body is not None:
        given.update(body=body, media_type="application/json")
    response = schema[path][method].Case(**given).call_and_validate(headers=AUTH)
    assert response.status_code == expect, response.text
    return response.json()


def test_the_mutating_routes_on_real_rows(fresh: Seed) -> None:
    persian, _, telegram, *_ = fresh.tickets
    ticket = _call("GET", "/api/tickets/{ref}", 200, ref=ticket_ref(persian))
    assert ticket["messages"][0]["text"] == "فاکتور من اشتباه است" and ticket["department"]["name"] == "billing"
    assert _call("GET", "/api/tickets/{ref}", 200, ref=str(telegram))["channel"] == "telegram"
    customer = fresh.customers[2]
    assert _call("GET", "/api/customers/{id}", 200, id=customer)["addresses"][1]["address"] == "phone:+989351234567"

    split = _call("POST", "/api/customers/{id}/split", 200, id=customer,
                  body={"address": "phone:0935 123 4567", "name": "برادر سارا"})
    merged = _call("POST", "/api/customers/{id}/merge", 200, id=customer, body={"from": split["customer"]})
    _call("POST", "/api/customers/{id}/merge", 409, id=customer, body={"from": split["customer"]})
    _call("POST", "/api/customers/{id}/merge", 422, id=customer, body={"from": customer})
    _call("POST", "/api/customers/{id}/merge", 404, id=customer, body={"from": 4242})
    _call("POST", "/api/merges/{event_id}/undo", 200, event_id=merged["merge_event"])
    _call("POST", "/api/merges/{event_id}/undo", 409, event_id=merged["merge_event"])
    undone = _call("POST", "/api/merges/{event_id}/undo", 200, event_id=fresh.merge_event)
    assert (undone["customer"], undone["survivor"]) == (fresh.customers[4], fresh.customers[3])

    sara, _ = fresh.agents
    assert _call("POST", "/api/agents/{id}/away", 200, id=sara, body={"away": True})["changed"] is True
    assert _call("POST", "/api/agents/{id}/away", 200, id=sara, body={"away": True})["changed"] is False
    assert _call("POST", "/api/jobs/{id}/retry", 200, id=fresh.dead_job)["state"] == "pending"
    _call("POST", "/api/jobs/{id}/retry", 409, id=fresh.dead_job)
    _call("POST", "/api/jobs/{id}/retry", 409, id=fresh.pending_job)


def test_edge_input_gets_a_json_refusal(app: Starlette) -> None:
    """Input schemathesis seldom draws that once got a 500: times past the calendar's ends, numbers too long
    for int(), a lone surrogate, no body at all; and a misspelt filter, which once matched everything."""
    huge = "9" * 5000
    for query in ({"since": "0001-01-01T00:00:00+05:00"}, {"until": "9999-12-31T23:59:59-05:00"}, {"limit": huge},
                  {"stauts": "open"}):
        assert _call("GET", "/api/tickets", 422, query=query)["error"]
    assert _call("GET", "/api/tickets", 200, query={"assignee": huge})["items"] == []
    _call("GET", "/api/tickets/{ref}", 422, ref=f"T-{huge}")
    _call("GET", "/api/customers/{id}", 422, id=huge)
    assert "lone surrogate" in _call("POST", "/api/customers/{id}/split", 422, id=1,
                                     body={"address": "email:sara@example.ir", "name": "\ud800"})["error"]
    _call("POST", "/api/rules/validate", 422, body={"text": "[[rule]]\nname = '\ud800'\n"})
    _call("POST", "/api/rules/validate", 422)
    assert _call("POST", "/api/rules/dry-run", 422, body={"channel": "email", "at": "9999-12-31T23:00:00Z"})[
        "error"].startswith("at: ")


@schema.parametrize()
@settings(derandomize=True, database=None, max_examples=25, deadline=None)
def test_every_operation_conforms_to_the_document(case: Any, app: Starlette) -> None:
    case.call_and_validate(headers=AUTH)


async def test_every_operation_refuses_a_missing_or_wrong_token(app: Starlette) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://kartabl") as client:
        document = (await client.get("/api/openapi.json", headers=AUTH)).json()
        assert document == json.loads(json.dumps(openapi_document()))  # what the schema test was given
        operations = [(method, path) for path, item in document["paths"].items() for method in item]
        assert len(operations) == 17
        for method, template in operations:
            path = template.replace("{ref}", "T-1001").replace("{id}", "1").replace("{event_id}", "1")
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": f"Bearer {TOKEN}x"}):
                response = await client.request(method.upper(), path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.headers["content-type"].startswith("application/json")
                assert response.json()["error"]


@pytest.mark.postgres
def test_odd_text_gets_an_answer_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """What SQLite takes and PostgreSQL cannot store or compare (a NUL), and times at the calendar's ends:
    each gets a JSON answer, never a 500."""
    probes = [("GET", "/api/tickets?q=a%00b", None, 200), ("GET", "/api/tickets?department=%00", None, 200),
              ("GET", "/api/customers?q=%00", None, 200),
              ("GET", "/api/tickets?since=0001-01-01T00:00:00%2B05:00", None, 422),
              ("POST", "/api/customers/3/split", {"address": "phone:09351234567", "name": "برادر\x00سارا"}, 200),
              ("POST", "/api/rules/dry-run", {"channel": "email", "at": "9999-12-31T23:00:00Z"}, 422)]

    settings = _settings(tmp_path, pg_url)
    asyncio.run(_seed(settings))

    async def ask() -> list[tuple[int, Any]]:
        runtime = _runtime(settings)  # asked and disposed in one event loop: asyncpg's connections are bound to it
        app = build_app(runtime.health, runtime.render_metrics, runtime._routes)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://kartabl",
                                         headers=AUTH) as client:
                return [((r := await client.request(method, path, json=body)).status_code, r.json())
                        for method, path, body, _ in probes]
        finally:
            await runtime.db.dispose()
    answers = asyncio.run(ask())
    assert [status for status, _ in answers] == [expect for *_, expect in probes], answers
    assert answers[4][1]["customer"] and answers[5][1]["error"].startswith("at: ")

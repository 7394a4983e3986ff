"""The admin API over real HTTP on both backends: the bearer token on every route, each route's answers
checked against the OpenAPI document it serves, merges undone exactly, splits, and every change on the
event log as api:admin."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from gateway.domain import ChannelKind, JobState, TicketStatus
from gateway.jalali import TEHRAN, gregorian_to_jalali
from gateway.schema import addresses, agents, customers, events, jobs, tickets
from gateway.settings import HttpSettings, Secret, WorkflowSettings
from gateway.staff import add_agent, add_department
from tests.conftest import Gateway, eventually, inbound

TOKEN = "admin-token-for-the-tests-0123456789"
ACTOR = "api:admin"
WORKFLOW = """\
[[rule]]
name = "Billing"
[rule.when]
text_any = ["فاکتور", "invoice"]
[rule.then]
department = "billing"
priority = "high"
tags = ["billing"]

[[rule]]
name = "VIP"
[rule.when]
customer_tags = ["vip"]
[rule.then]
priority = "urgent"
"""


class Api:
    """An HTTP client of one gateway's admin API that checks every answer against the served document."""

    def __init__(self, gw: Gateway, client: httpx.AsyncClient, document: dict[str, Any]) -> None:
        self.gw, self.client, self.document = gw, client, document

    async def call(self, method: str, path: str, *, expect: int = 200, template: str | None = None,
                   **kwargs: Any) -> Any:
        """`method path`, asserting the status and that the body fits the documented schema for it."""
        response = await self.client.request(method, path, **kwargs)
        assert response.status_code == expect, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        operation = self.document["paths"][template or path.split("?")[0]][method.lower()]
        documented = operation["responses"][str(expect)]
        if "$ref" in documented:
            documented = resolve(self.document, documented)
        check(self.document, documented["content"]["application/json"]["schema"], body, f"{method} {path}")
        return body

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Any:
        return await self.call("POST", path, **kwargs)


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    target: Any = document
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return target


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def check(document: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> None:
    """The JSON Schema keywords the document uses, strictly: a body the document does not describe fails."""
    if "$ref" in schema:
        return check(document, resolve(document, schema), value, where)
    if "anyOf" in schema:
        failures = []
        for option in schema["anyOf"]:
            try:
                return check(document, option, value, where)
            except AssertionError as exc:
                failures.append(str(exc))
        raise AssertionError(f"{where}: {value!r} fits no option: {failures}")
    if "const" in schema:
        assert value == schema["const"], f"{where}: {value!r} is not {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_fits(kind, value) for kind in kinds), f"{where}: {value!r} is not {kinds}"
    if schema.get("format") == "date-time" and isinstance(value, str):
        assert dt.datetime.fromisoformat(value).tzinfo is not None, f"{where}: {value!r} has no offset"
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            assert name in value, f"{where}: {name} missing"
        for name, item in value.items():
            if name in schema.get("properties", {}):
                check(document, schema["properties"][name], item, f"{where}.{name}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{where}: {name} is not documented"
        assert len(value) <= schema.get("maxProperties", len(value))
    if isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            check(document, schema["items"], item, f"{where}[{n}]")
    if isinstance(value, int) and not isinstance(value, bool):
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), f"{where}: {value} out of range"


def _fits(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


@pytest.fixture
async def api(start_gateway, tmp_path: Path) -> AsyncIterator[Api]:  # noqa: ANN001
    rules = tmp_path / "workflows.toml"
    rules.write_text(WORKFLOW, encoding="utf-8")
    gw = await start_gateway(http=HttpSettings(enabled=True, port=0, admin_token=Secret(TOKEN)),
                             workflows=WorkflowSettings(file=str(rules)))
    await add_department(gw.runtime.db, "billing", title="مالی")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.runtime.http_port}",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        document = (await client.get("/api/openapi.json")).json()
        yield Api(gw, client, document)


async def _snapshot(gw: Gateway) -> dict[str, Any]:
    """Who owns what: every address, ticket and event by customer, and every customer's merged_into."""
    return {
        "addresses": await gw.rows(sa.select(addresses.c.id, addresses.c.customer_id).order_by(addresses.c.id)),
        "tickets": await gw.rows(sa.select(tickets.c.id, tickets.c.customer_id).order_by(tickets.c.id)),
        "events": await gw.rows(sa.select(events.c.id, events.c.customer_id).order_by(events.c.id)),
        "customers": await gw.rows(sa.select(customers.c.id, customers.c.merged_into).order_by(customers.c.id)),
    }


async def _api_events(gw: Gateway, kind: str) -> list[Any]:
    return await gw.rows(sa.select(events).where(events.c.kind == kind).order_by(events.c.id))


async def _routed(gw: Gateway, ticket_id: int) -> None:
    await eventually(lambda: gw.scalar(sa.select(tickets.c.first_response_due).where(tickets.c.id == ticket_id)))


async def _settled(gw: Gateway) -> None:
    """Every job due has run, and those it queued (the workflow's steps write events of their own)."""
    await eventually(lambda: gw.count(jobs, jobs.c.state != JobState.DEAD, jobs.c.due_at <= dt.datetime.now(dt.UTC)),
                     lambda n: n == 0)


# --- the document and the token ---------------------------------------------------------------------

async def test_the_document_is_openapi_3_1_and_names_every_mounted_route(api: Api) -> None:
    doc = api.document
    assert doc["openapi"] == "3.1.0" and json.loads(json.dumps(doc)) == doc
    app = api.gw.runtime._server.config.app
    mounted = {(route.path, method.lower()) for route in app.routes if route.path.startswith("/api/")
               for method in route.methods if method != "HEAD"}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert mounted == documented and len(mounted) == 17

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []
    for ref in refs(doc):
        assert resolve(doc, {"$ref": ref}), ref
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert "401" in operation["responses"], (method, path)
            names = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
            if names:
                assert {"404", "422"} <= set(operation["responses"]) or path == "/api/tickets/{ref}", path
            if "requestBody" in operation:
                assert "422" in operation["responses"] and "413" in operation["responses"], path


async def test_every_route_refuses_a_missing_or_wrong_token_and_changes_nothing(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    gw = api.gw
    first = await gw.runtime.deliver(inbound("m-1", "email:sara@example.ir"))
    await gw.runtime.deliver(inbound("m-2", "email:reza@example.ir"))
    agent = await add_agent(gw.runtime.db, "Sara", telegram_user_id=11, username="sara")
    await _settled(gw)
    before = await _snapshot(gw)
    bodies = {"/api/customers/{id}/merge": {"from": 2}, "/api/customers/{id}/split": {"address": "email:a@b.ir"},
              "/api/agents/{id}/away": {"away": True}, "/api/rules/dry-run": {"channel": "sms"},
              "/api/rules/validate": {"text": ""}}
    caplog.set_level(logging.DEBUG)
    refusals = 0
    async with httpx.AsyncClient(base_url=str(api.client.base_url)) as anonymous:
        for template, item in api.document["paths"].items():
            path = (template.replace("{ref}", f"T-{1000 + first.ticket_id}").replace("{event_id}", "1")
                    .replace("{id}", str(agent if "agents" in template else first.customer_id)))
            for method in item:
                for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                                {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"},
                                {"Authorization": "Bearer"}):
                    response = await anonymous.request(method.upper(), path, headers=headers,
                                                       json=bodies.get(template) if method == "post" else None)
                    assert response.status_code == 401, (method, path, headers)
                    assert response.headers["www-authenticate"].startswith("Bearer")
                    assert "error" in response.json()
                    refusals += 1
    assert refusals == 17 * 6
    assert await _snapshot(gw) == before
    assert await gw.count(events, events.c.actor == ACTOR) == 0
    assert await gw.scalar(sa.select(agents.c.away).where(agents.c.id == agent)) is False
    assert "refused" in caplog.text and TOKEN not in caplog.text
    # The scheme's case does not matter (RFC 6750); the token's does.
    assert (await api.client.get("/api/agents", headers={"Authorization": f"bearer {TOKEN}"})).status_code == 200
    assert (await api.client.get("/api/agents", headers={"Authorization": f"Bearer {TOKEN.upper()}"})).status_code == 401


async def test_without_an_admin_token_there_is_no_api(start_gateway) -> None:  # noqa: ANN001
    gw = await start_gateway(http=HttpSettings(enabled=True, port=0))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.runtime.http_port}") as client:
        for path in ("/api/openapi.json", "/api/tickets", "/api/agents"):
            response = await client.get(path, headers={"Authorization": "Bearer anything"})
            assert response.status_code == 404
        assert (await client.get("/healthz")).status_code == 200


# --- tickets ----------------------------------------------------------------------------------------

async def test_tickets_are_listed_newest_first_with_filters_and_paging(api: Api) -> None:
    gw = api.gw
    billing = await gw.runtime.deliver(inbound("m-1", "email:sara@example.ir", "فاکتور من اشتباه است",
                                               subject="Invoice 42"))
    other = await gw.runtime.deliver(inbound("m-2", "phone:09121234567", "سفارشم نرسید", channel=ChannelKind.SMS))
    third = await gw.runtime.deliver(inbound("m-3", "email:reza@example.ir", "hello 100%_sure"))
    for result in (billing, other, third):
        await _routed(gw, result.ticket_id)
    await gw.runtime.tickets.set_status(third.ticket_id, TicketStatus.WAITING, actor="agent:1")

    every = await api.get("/api/tickets")
    assert [t["id"] for t in every["items"]] == [third.ticket_id, other.ticket_id, billing.ticket_id]
    assert every["total"] == 3 and every["limit"] == 50 and every["offset"] == 0
    first = every["items"][-1]
    assert first["ref"] == f"T-{1000 + billing.ticket_id}" and first["department"] == "billing"
    assert first["priority"] == "high" and first["tags"] == ["billing"] and first["reply_to"] == "email:sara@example.ir"

    async def ids(query: str) -> list[int]:
        return [t["id"] for t in (await api.get(f"/api/tickets?{query}"))["items"]]
    assert await ids("status=waiting") == [third.ticket_id]
    assert await ids("channel=sms") == [other.ticket_id]
    assert await ids("department=billing") == [billing.ticket_id]
    assert await ids("department=none") == [third.ticket_id, other.ticket_id]
    assert await ids("department=nothing") == []
    assert await ids("priority=high") == [billing.ticket_id]
    assert await ids("assignee=none") == [third.ticket_id, other.ticket_id, billing.ticket_id]
    assert await ids("assignee=7") == []
    assert await ids("q=invoice") == [billing.ticket_id]  # the subject, in any case
    assert await ids("q=نرسید") == [other.ticket_id]  # a message's text
    assert await ids("q=100%25_") == [third.ticket_id]  # % and _ are literal
    assert await ids("q=%25e") == []
    today = dt.datetime.now(dt.UTC).date()
    assert len(await ids(f"since={today - dt.timedelta(days=1)}&until={today + dt.timedelta(days=1)}")) == 3
    assert await ids(f"until={today - dt.timedelta(days=2)}") == []
    assert await ids("since=2999-01-01T00:00:00%2B03:30") == []
    page = await api.get("/api/tickets?limit=1&offset=1")
    assert [t["id"] for t in page["items"]] == [other.ticket_id] and page["total"] == 3

    for query in ("status=lost", "channel=fax", "priority=max", "limit=0", "limit=201", "offset=-1", "limit=x",
                  "assignee=sara", "since=yesterday", "since=2026-11-23T10:00:00", "until=2026-13-01",
                  "until=9999-12-31"):
        error = await api.get(f"/api/tickets?{query}", expect=422, template="/api/tickets")
        assert query.split("=")[0] in error["error"]


async def test_a_ticket_shows_its_customer_every_message_every_event_and_its_referrals(api: Api) -> None:
    gw = api.gw
    result = await gw.runtime.deliver(inbound("m-1", "email:sara@example.ir", "invoice wrong", subject="Invoice"))
    await _routed(gw, result.ticket_id)
    agent = await add_agent(gw.runtime.db, "Reza", telegram_user_id=12, username="reza")
    sales = await add_department(gw.runtime.db, "sales")
    await gw.runtime.tickets.reply(result.ticket_id, "سلام، بررسی می‌کنیم", agent_id=agent)
    await gw.runtime.tickets.transfer(result.ticket_id, sales, actor=f"agent:{agent}", reason="a sales question")
    await gw.runtime.tickets.note(result.ticket_id, "internal", agent_id=agent)
    await _settled(gw)

    ref = f"T-{1000 + result.ticket_id}"
    detail = await api.get(f"/api/tickets/{ref}", template="/api/tickets/{ref}")
    assert detail == await api.get(f"/api/tickets/{result.ticket_id}", template="/api/tickets/{ref}")
    assert await api.get(f"/api/tickets/{ref.lower()}", template="/api/tickets/{ref}") == detail
    assert detail["ref"] == ref and detail["department"]["name"] == "sales" and detail["status"] == "open"
    assert detail["customer"]["addresses"] == ["email:sara@example.ir"]
    assert [(m["direction"], m["text"]) for m in detail["messages"]] == [
        ("in", "invoice wrong"), ("out", "سلام، بررسی می‌کنیم"), ("note", "internal")]
    assert detail["messages"][0]["sender"] == "email:sara@example.ir"
    assert detail["messages"][1]["agent"] == {"id": agent, "name": "Reza", "username": "reza"}
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds[:2] == ["ticket.created", "rule.fired"] and "ticket.department" in kinds
    assert [(r["from"], r["to"], r["reason"]) for r in detail["referrals"]] == [
        (None, "billing", None), ("billing", "sales", "a sales question")]

    assert "no ticket" in (await api.get("/api/tickets/T-9999", expect=404, template="/api/tickets/{ref}"))["error"]
    for bad in ("T-12", "abc", "0", "99999999999999999999"):
        await api.get(f"/api/tickets/{bad}", expect=422, template="/api/tickets/{ref}")


# --- customers: reading, merging, undoing, splitting ------------------------------------------------

async def test_a_customer_shows_every_address_and_ticket(api: Api) -> None:
    gw = api.gw
    first = await gw.runtime.deliver(inbound("m-1", "telegram:777", "سلام", channel=ChannelKind.TELEGRAM,
                                             also_known_as=("phone:09121234567",), sender_name="سارا"))
    second = await gw.runtime.deliver(inbound("m-2", "phone:+989121234567", "پیامک", channel=ChannelKind.SMS))
    assert first.customer_id == second.customer_id

    found = await api.get(f"/api/customers/{first.customer_id}", template="/api/customers/{id}")
    assert found["name"] == "سارا" and found["merged_into"] is None and found["merged_from"] == []
    assert [a["address"] for a in found["addresses"]] == ["telegram:777", "phone:+989121234567"]
    assert [(t["id"], t["channel"]) for t in found["tickets"]] == [(first.ticket_id, "telegram"), (second.ticket_id, "sms")]

    listed = await api.get("/api/customers?address=phone:0912%20123%204567")
    assert [c["id"] for c in listed["items"]] == [first.customer_id] and listed["total"] == 1
    assert (await api.get("/api/customers?q=سا"))["total"] == 1
    assert (await api.get("/api/customers?q=xyz"))["items"] == []
    await api.get("/api/customers?address=fax:1", expect=422, template="/api/customers")
    await api.get("/api/customers/424242", expect=404, template="/api/customers/{id}")
    await api.get("/api/customers/x", expect=422, template="/api/customers/{id}")


async def test_a_merge_moves_everything_and_its_undo_restores_exactly_the_state_before(api: Api) -> None:
    gw = api.gw
    sara = await gw.runtime.deliver(inbound("m-1", "email:sara@example.ir", "invoice?"))
    other = await gw.runtime.deliver(inbound("m-2", "phone:09121234567", "سلام", channel=ChannelKind.SMS))
    again = await gw.runtime.deliver(inbound("m-3", "telegram:555", "hi", channel=ChannelKind.TELEGRAM,
                                             also_known_as=("phone:09121234567",)))
    assert again.customer_id == other.customer_id
    await gw.runtime.tickets.set_status(other.ticket_id, TicketStatus.RESOLVED, actor="agent:1")
    await gw.runtime.deliver(inbound("m-4", "phone:09121234567", "باز هم", channel=ChannelKind.SMS))  # reopens
    await _settled(gw)
    before = await _snapshot(gw)
    moved_events = [e.id for e in before["events"] if e.customer_id == other.customer_id]
    assert moved_events

    done = await api.post(f"/api/customers/{sara.customer_id}/merge", json={"from": other.customer_id},
                          template="/api/customers/{id}/merge")
    assert (done["customer"], done["from"]) == (sara.customer_id, other.customer_id)
    assert done["tickets"] == sorted([other.ticket_id, again.ticket_id]) and done["events"] == moved_events
    survivor = await api.get(f"/api/customers/{sara.customer_id}", template="/api/customers/{id}")
    assert [a["address"] for a in survivor["addresses"]] == [
        "email:sara@example.ir", "phone:+989121234567", "telegram:555"]
    assert {t["id"] for t in survivor["tickets"]} == {sara.ticket_id, other.ticket_id, again.ticket_id}
    assert survivor["merged_from"] == [other.customer_id]
    gone = await api.get(f"/api/customers/{other.customer_id}", template="/api/customers/{id}")
    assert gone["merged_into"] == sara.customer_id and gone["merge_event"] == done["merge_event"]
    assert gone["addresses"] == [] and gone["tickets"] == []
    assert await gw.count(events, events.c.customer_id == other.customer_id) == 0
    (record,) = await _api_events(gw, "customer.merged")
    assert record.id == done["merge_event"] and record.actor == ACTOR and record.customer_id == sara.customer_id
    assert record.data == {"from": other.customer_id, "into": sara.customer_id, "addresses": done["addresses"],
                           "address_values": ["phone:+989121234567", "telegram:555"], "tickets": done["tickets"],
                           "events": moved_events}
    detail = await api.get(f"/api/tickets/{other.ticket_id}", template="/api/tickets/{ref}")
    assert detail["customer"]["id"] == sara.customer_id

    undone = await api.post(f"/api/merges/{done['merge_event']}/undo", template="/api/merges/{event_id}/undo")
    assert (undone["customer"], undone["survivor"]) == (other.customer_id, sara.customer_id)
    after = await _snapshot(gw)
    new = [e for e in after["events"] if e.id > before["events"][-1].id]
    assert {**after, "events": after["events"][:len(before["events"])]} == before
    assert [(e.customer_id) for e in new] == [sara.customer_id, sara.customer_id]  # merged, unmerged
    (unmerged,) = await _api_events(gw, "customer.unmerged")
    assert unmerged.actor == ACTOR and unmerged.data["merge_event"] == done["merge_event"]
    assert unmerged.data["tickets"] == done["tickets"] and unmerged.data["events"] == moved_events

    twice = await api.post(f"/api/merges/{done['merge_event']}/undo", expect=409,
                           template="/api/merges/{event_id}/undo")
    assert "undone already" in twice["error"]
    assert await _snapshot(gw) == after

    # Merged again: the customer's next message lands on the survivor; the old merge stays undone.
    redo = await api.post(f"/api/customers/{sara.customer_id}/merge", json={"from": other.customer_id},
                          template="/api/customers/{id}/merge")
    later = await gw.runtime.deliver(inbound("m-5", "phone:+98 912 123 4567", "هنوز منتظرم", channel=ChannelKind.SMS))
    assert later.customer_id == sara.customer_id and later.ticket_id == other.ticket_id
    fresh = await gw.runtime.deliver(inbound("m-6", "telegram:555", "new", channel=ChannelKind.TELEGRAM))
    assert fresh.customer_id == sara.customer_id
    stale = await api.post(f"/api/merges/{done['merge_event']}/undo", expect=409,
                           template="/api/merges/{event_id}/undo")
    assert str(redo["merge_event"]) in stale["error"]


async def test_merges_are_refused_when_they_cannot_be_done(api: Api) -> None:
    gw = api.gw
    a, b, c = [await gw.runtime.deliver(inbound(f"m-{n}", f"email:c{n}@example.ir")) for n in range(3)]
    merge = "/api/customers/{id}/merge"

    async def attempt(survivor: int, body: Any, expect: int, **kwargs: Any) -> str:
        return (await api.post(f"/api/customers/{survivor}/merge", expect=expect, template=merge,
                               json=body, **kwargs))["error"]
    assert "itself" in await attempt(a.customer_id, {"from": a.customer_id}, 422)
    assert "from" in await attempt(a.customer_id, {}, 422)
    assert "from" in await attempt(a.customer_id, {"from": "2"}, 422)
    assert "from" in await attempt(a.customer_id, {"from": True}, 422)
    assert "from" in await attempt(a.customer_id, {"from": -1}, 422)
    assert "unknown field" in await attempt(a.customer_id, {"from": b.customer_id, "force": True}, 422)
    assert "JSON object" in await attempt(a.customer_id, [b.customer_id], 422)
    bad = await api.post(f"/api/customers/{a.customer_id}/merge", expect=422, template=merge, content=b"{nope")
    assert "JSON" in bad["error"]
    assert "no customer 4242" in await attempt(a.customer_id, {"from": 4242}, 404)
    assert "no customer 4242" in await attempt(4242, {"from": a.customer_id}, 404)
    huge = await api.post(f"/api/customers/{a.customer_id}/merge", expect=413, template=merge,
                          content=b" " * (1_048_576 + 1))
    assert "larger" in huge["error"]

    await api.post(f"/api/customers/{a.customer_id}/merge", json={"from": b.customer_id}, template=merge)
    assert "merged into" in await attempt(c.customer_id, {"from": b.customer_id}, 409)  # b is gone
    assert "merged into" in await attempt(b.customer_id, {"from": c.customer_id}, 409)  # into one that is gone
    await api.post(f"/api/customers/{c.customer_id}/merge", json={"from": a.customer_id}, template=merge)
    (first, _) = [e.id for e in await _api_events(gw, "customer.merged")]
    chained = await api.post(f"/api/merges/{first}/undo", expect=409, template="/api/merges/{event_id}/undo")
    assert "undo that merge first" in chained["error"]
    await api.post("/api/merges/424242/undo", expect=404, template="/api/merges/{event_id}/undo")
    await api.post(f"/api/merges/{first}/undo", expect=422, template="/api/merges/{event_id}/undo", json={"x": 1})
    assert await gw.count(events, events.c.actor == ACTOR) == 2  # the refusals changed nothing


async def test_two_merges_of_the_same_pair_at_once_make_one_merge(api: Api) -> None:
    gw = api.gw
    a, b = [await gw.runtime.deliver(inbound(f"m-{n}", f"email:c{n}@example.ir")) for n in range(2)]
    answers = await asyncio.gather(
        api.client.post(f"/api/customers/{a.customer_id}/merge", json={"from": b.customer_id}),
        api.client.post(f"/api/customers/{b.customer_id}/merge", json={"from": a.customer_id}))
    assert sorted(r.status_code for r in answers) == [200, 409]
    merged = await gw.rows(sa.select(customers.c.id, customers.c.merged_into).where(
        customers.c.merged_into.is_not(None)))
    assert len(merged) == 1 and len(await _api_events(gw, "customer.merged")) == 1
    survivor = merged[0].merged_into
    assert await gw.count(addresses, addresses.c.customer_id == survivor) == 2
    assert await gw.count(tickets, tickets.c.customer_id == survivor) == 2


async def test_a_split_gives_an_address_and_the_tickets_it_opened_to_a_new_customer(api: Api) -> None:
    gw = api.gw
    mail = await gw.runtime.deliver(inbound("m-1", "telegram:777", "سلام", channel=ChannelKind.TELEGRAM,
                                            also_known_as=("phone:09121234567",)))
    sms = await gw.runtime.deliver(inbound("m-2", "phone:09121234567", "پیامک", channel=ChannelKind.SMS))
    assert sms.customer_id == mail.customer_id
    split = "/api/customers/{id}/split"

    done = await api.post(f"/api/customers/{mail.customer_id}/split", template=split,
                          json={"address": "phone:0912 123 4567", "name": "برادر سارا"})
    assert done["from"] == mail.customer_id and done["address"] == "phone:+989121234567"
    assert done["tickets"] == [sms.ticket_id]
    new = await api.get(f"/api/customers/{done['customer']}", template="/api/customers/{id}")
    assert new["name"] == "برادر سارا" and [a["address"] for a in new["addresses"]] == ["phone:+989121234567"]
    assert [t["id"] for t in new["tickets"]] == [sms.ticket_id]
    old = await api.get(f"/api/customers/{mail.customer_id}", template="/api/customers/{id}")
    assert [a["address"] for a in old["addresses"]] == ["telegram:777"]
    assert [t["id"] for t in old["tickets"]] == [mail.ticket_id]
    (record,) = await _api_events(gw, "customer.split")
    assert record.id == done["split_event"] and record.actor == ACTOR and record.old == "phone:+989121234567"
    assert record.data["into"] == done["customer"] and record.data["tickets"] == [sms.ticket_id]
    created = (await _api_events(gw, "customer.created"))[-1]
    assert created.customer_id == done["customer"] and created.actor == ACTOR
    assert await gw.count(events, events.c.ticket_id == sms.ticket_id,
                          events.c.customer_id == mail.customer_id) == 0  # the ticket's events went with it
    later = await gw.runtime.deliver(inbound("m-3", "phone:09121234567", "باز", channel=ChannelKind.SMS))
    assert later.customer_id == done["customer"] and later.ticket_id == sms.ticket_id

    last = await api.post(f"/api/customers/{mail.customer_id}/split", expect=409, template=split,
                          json={"address": "telegram:777"})
    assert "only address" in last["error"]
    await api.post(f"/api/customers/{mail.customer_id}/split", expect=404, template=split,
                   json={"address": "email:nobody@example.ir"})
    await api.post(f"/api/customers/{mail.customer_id}/split", expect=404, template=split,
                   json={"address": "phone:09121234567"})  # someone else's now
    for body in ({"address": "fax:1"}, {"address": "email:not-an-address"}, {}, {"address": 5}):
        await api.post(f"/api/customers/{mail.customer_id}/split", expect=422, template=split, json=body)
    await api.post("/api/customers/4242/split", expect=404, template=split, json={"address": "telegram:777"})
    # Merging the new customer back undoes a split.
    await api.post(f"/api/customers/{mail.customer_id}/merge", json={"from": done["customer"]},
                   template="/api/customers/{id}/merge")
    merged = await api.post(f"/api/customers/{done['customer']}/split", expect=409, template=split,
                            json={"address": "phone:09121234567"})
    assert "merged into" in merged["error"]


# --- agents, departments, rules, jobs ----------------------------------------------------------------

async def test_agents_and_departments_and_an_agent_marked_away_and_back(api: Api) -> None:
    gw = api.gw
    support = await add_department(gw.runtime.db, "support", strategy="round_robin", review=True)
    sara = await add_agent(gw.runtime.db, "Sara", telegram_user_id=11, username="sara", is_lead=True,
                           department_names=("billing", "support"))
    reza = await add_agent(gw.runtime.db, "Reza", telegram_user_id=12, department_names=("support",))
    result = await gw.runtime.deliver(inbound("m-1", "email:c@example.ir"))
    await gw.runtime.tickets.assign(result.ticket_id, reza, actor="agent:1")

    listed = (await api.get("/api/agents"))["items"]
    assert [(a["id"], a["name"], a["departments"], a["is_lead"], a["away"]) for a in listed] == [
        (sara, "Sara", ["billing", "support"], True, False), (reza, "Reza", ["support"], False, False)]
    assert listed[1]["open_tickets"] == 1
    departments = (await api.get("/api/departments"))["items"]
    assert [(d["name"], d["agents"], d["strategy"], d["review"]) for d in departments] == [
        ("billing", [sara], "manual", False), ("support", [sara, reza], "round_robin", True)]
    assert departments[1]["id"] == support

    away = "/api/agents/{id}/away"
    done = await api.post(f"/api/agents/{sara}/away", json={"away": True}, template=away)
    assert done["changed"] and done["away"] is True
    assert await gw.scalar(sa.select(agents.c.away).where(agents.c.id == sara)) is True
    (record,) = await _api_events(gw, "agent.away")
    assert (record.id, record.actor, record.old, record.new, record.data) == (
        done["event"], ACTOR, "false", "true", {"agent_id": sara})
    same = await api.post(f"/api/agents/{sara}/away", json={"away": True}, template=away)
    assert not same["changed"] and same["event"] is None
    await api.post(f"/api/agents/{sara}/away", json={"away": False}, template=away)
    assert await gw.scalar(sa.select(agents.c.away).where(agents.c.id == sara)) is False
    assert len(await _api_events(gw, "agent.away")) == 2
    await api.post("/api/agents/4242/away", expect=404, template=away, json={"away": True})
    for body in ({}, {"away": "yes"}, {"away": 1}, {"away": True, "until": "friday"}):
        await api.post(f"/api/agents/{sara}/away", expect=422, template=away, json=body)


async def test_the_rules_are_shown_validated_and_dry_run(api: Api, tmp_path: Path) -> None:
    rules = await api.get("/api/rules")
    assert rules["text"] == WORKFLOW and rules["source"] == "workflows.toml" and rules["error"] is None
    assert [(r["name"], r["line"]) for r in rules["rules"]] == [("Billing", 1), ("VIP", 10)]

    assert await api.post("/api/rules/validate", content=WORKFLOW.encode(),
                          headers={"Content-Type": "text/plain; charset=utf-8"}) == {"ok": True}
    assert await api.post("/api/rules/validate", json={"text": WORKFLOW}) == {"ok": True}
    broken = WORKFLOW.replace('text_any = ["فاکتور", "invoice"]', 'txt_any = ["x"]')
    refused = await api.post("/api/rules/validate", content=broken.encode(), expect=422)
    assert refused["ok"] is False and refused["error"].startswith("workflows.toml:4: ") and "txt_any" in refused["error"]
    toml = await api.post("/api/rules/validate", json={"text": "[[rule]\n"}, expect=422)
    assert toml["error"].startswith("workflows.toml: not valid TOML")
    await api.post("/api/rules/validate", content=b"\xff\xfe", expect=422)
    await api.post("/api/rules/validate", json={"txt": ""}, expect=422)
    assert (await api.get("/api/rules"))["rules"] == rules["rules"]  # validating changed nothing

    fired = await api.post("/api/rules/dry-run", json={
        "channel": "sms", "sender": "09121234567", "text": "فاكتور من", "tags": ["vip"],
        "at": "2026-11-21T10:00:00+03:30"})  # a Saturday morning in Tehran
    assert [f["rule"] for f in fired["fired"]] == ["Billing", "VIP"] and fired["missed"] == []
    assert "فاکتور" in " ".join(fired["fired"][0]["why"]) and fired["business_hours"] is True
    assert fired["decision"] == {"department": "billing", "priority": "urgent", "tags": ["billing"], "assign": None,
                                 "reply_template": None, "review": False}
    assert fired["first_response_due"] == "2026-11-21T07:30:00+00:00"  # 1 business hour later
    assert fired["explain"][-1].startswith("result: ")
    quiet = await api.post("/api/rules/dry-run", json={"channel": "email", "sender": "email:A@Example.ir",
                                                      "text": "hello", "at": "2026-11-20T10:00:00+03:30"})
    assert quiet["fired"] == [] and [m["rule"] for m in quiet["missed"]] == ["Billing", "VIP"]
    assert quiet["business_hours"] is False and quiet["decision"]["priority"] is None
    for body in ({}, {"channel": "fax"}, {"channel": "sms", "sender": "not a phone"},
                 {"channel": "email", "tags": [1]}, {"channel": "email", "at": "2026-11-20T10:00:00"},
                 {"channel": "email", "attachment": "yes"}, {"channel": "email", "colour": "red"}):
        await api.post("/api/rules/dry-run", json=body, expect=422)


async def test_jobs_are_listed_and_a_dead_one_retried(api: Api) -> None:
    gw = api.gw
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    def make(conn: sa.Connection) -> tuple[int, int]:
        dead = gw.runtime.queue.enqueue(conn, "test.never", {"n": 1}, due_at=later)
        conn.execute(sa.update(jobs).where(jobs.c.id == dead).values(state=JobState.DEAD, attempts=12,
                                                                      last_error="refused for good"))
        return dead, gw.runtime.queue.enqueue(conn, "test.never", {"n": 2}, due_at=later)
    dead, pending = await gw.runtime.db.run_write(make)

    listed = (await api.get("/api/jobs?state=dead"))["items"]
    assert [(j["id"], j["last_error"], j["payload"]) for j in listed] == [(dead, "refused for good", {"n": 1})]
    assert pending in [j["id"] for j in (await api.get("/api/jobs?state=pending"))["items"]]
    assert len((await api.get("/api/jobs?limit=1"))["items"]) == 1
    await api.get("/api/jobs?state=lost", expect=422, template="/api/jobs")

    retry = "/api/jobs/{id}/retry"
    done = await api.post(f"/api/jobs/{dead}/retry", template=retry)
    assert done["state"] == "pending"
    (record,) = await _api_events(gw, "job.retried")
    assert (record.id, record.actor, record.data) == (done["event"], ACTOR, {"job_id": dead, "kind": "test.never"})
    assert (await gw.rows(sa.select(jobs.c.attempts).where(jobs.c.id == dead)))[0].attempts <= 1
    conflict = await api.post(f"/api/jobs/{pending}/retry", expect=409, template=retry)
    assert "not dead" in conflict["error"]
    await api.post("/api/jobs/424242/retry", expect=404, template=retry)
    await api.post("/api/jobs/x/retry", expect=422, template=retry)


async def test_reports_count_the_desks_days_in_either_calendar(api: Api) -> None:
    gw = api.gw
    for n, (sender, channel) in enumerate([("email:a@example.ir", ChannelKind.EMAIL),
                                           ("email:b@example.ir", ChannelKind.EMAIL),
                                           ("phone:09121234567", ChannelKind.SMS)]):
        await gw.runtime.deliver(inbound(f"m-{n}", sender, channel=channel))
    today = dt.datetime.now(dt.UTC).astimezone(TEHRAN).date()

    report = await api.get("/api/reports?by=channel")
    assert report["total"]["new"] == 3 and report["by"] == "channel"
    assert {g["group"]: g["new"] for g in report["groups"]} == {"email": 2, "sms": 1}
    assert report["last_day"] == today.isoformat() and len(report["days"]) == 30 and "jalali" not in report
    jy, jm, jd = gregorian_to_jalali(today)
    one = await api.get(f"/api/reports?since={jy}/{jm:02d}/{jd:02d}&until={today}&jalali=true")
    assert one["first_day"] == one["last_day"] == today.isoformat() and one["total"]["new"] == 3
    assert one["jalali"]["first_day"] and one["days"][0]["jalali"] and one["groups"] == []
    before = await api.get(f"/api/reports?until={today - dt.timedelta(days=1)}&by=agent")
    assert before["total"]["new"] == 0

    for query in ("by=colour", "since=tomorrow", "since=2026-02-30", f"since={today}&until={today - dt.timedelta(days=1)}",
                  f"since={today - dt.timedelta(days=400)}&until={today}", "jalali=perhaps", "since=0001-01-01",
                  "since=9999-12-30&until=9999-12-31"):
        error = await api.get(f"/api/reports?{query}", expect=422, template="/api/reports")
        assert error["error"], query

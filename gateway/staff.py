"""Agents and departments: who may act on tickets from the desk, and where tickets can be referred."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from gateway.db import Database
from gateway.messages import utcnow
from gateway.schema import agent_departments, agents, departments


@dataclasses.dataclass(frozen=True, slots=True)
class Agent:
    id: int
    name: str
    telegram_user_id: int | None
    username: str | None
    is_lead: bool
    departments: tuple[str, ...]


async def add_agent(db: Database, name: str, *, telegram_user_id: int | None = None, username: str | None = None,
                    is_lead: bool = False, department_names: tuple[str, ...] = ()) -> int:
    """Register an agent (or update the one with this Telegram id); returns the agent's id."""
    def work(conn: sa.Connection) -> int:
        found = conn.execute(sa.select(agents.c.id).where(agents.c.telegram_user_id == telegram_user_id)).scalar() \
            if telegram_user_id is not None else None
        values = {"name": name, "telegram_user_id": telegram_user_id, "username": (username or "").lstrip("@") or None,
                  "is_lead": is_lead, "active": True}
        if found is None:
            found = conn.execute(sa.insert(agents).returning(agents.c.id), {**values, "created_at": utcnow()}).scalar_one()
        else:
            conn.execute(sa.update(agents).where(agents.c.id == found).values(values))
        for department in department_names:
            department_id = conn.execute(sa.select(departments.c.id).where(departments.c.name == department)).scalar()
            if department_id is None:
                raise LookupError(f"no department {department!r} (add it first: kartabl departments add)")
            conn.execute(sa.delete(agent_departments).where(agent_departments.c.agent_id == found,
                                                            agent_departments.c.department_id == department_id))
            conn.execute(sa.insert(agent_departments), {"agent_id": found, "department_id": department_id})
        return found
    return await db.run_write(work)


async def list_agents(db: Database) -> list[Agent]:
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(agents.c.id, agents.c.name, agents.c.telegram_user_id, agents.c.username,
                                             agents.c.is_lead).where(agents.c.active.is_(True)).order_by(agents.c.id))).all()
        member = (await conn.execute(sa.select(agent_departments.c.agent_id, departments.c.name)
                                     .join(departments, departments.c.id == agent_departments.c.department_id))).all()
    names: dict[int, list[str]] = {}
    for agent_id, department in member:
        names.setdefault(agent_id, []).append(department)
    return [Agent(r.id, r.name, r.telegram_user_id, r.username, r.is_lead, tuple(names.get(r.id, ()))) for r in rows]


async def add_department(db: Database, name: str, *, title: str | None = None, chat_id: int | None = None,
                         strategy: str | None = None, review: bool | None = None) -> int:
    """Add a department (or update the one of this name); `chat_id`: its own Telegram group (0: none
    any more); `strategy`: how its tickets are assigned; `review`: replies wait for a lead. None: as it was."""
    values: dict[str, object] = {"title": title}
    if chat_id is not None:
        values["chat_id"] = str(chat_id) if chat_id else None
    if strategy is not None:
        values["strategy"] = strategy
    if review is not None:
        values["review"] = review

    def work(conn: sa.Connection) -> int:
        found = conn.execute(sa.select(departments.c.id).where(departments.c.name == name)).scalar()
        if found is not None:
            conn.execute(sa.update(departments).where(departments.c.id == found).values(values))
            return found
        return conn.execute(sa.insert(departments).returning(departments.c.id),
                            {"name": name, **values, "created_at": utcnow()}).scalar_one()
    return await db.run_write(work)


async def list_departments(db: Database) -> list[tuple[int, str, str | None, str | None, str, bool]]:
    async with db.read() as conn:
        return [tuple(r) for r in (await conn.execute(
            sa.select(departments.c.id, departments.c.name, departments.c.title, departments.c.chat_id,
                      departments.c.strategy, departments.c.review)
            .order_by(departments.c.id))).all()]

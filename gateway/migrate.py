"""Schema migrations: apply them, and tell whether a database is at the code's revision."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from gateway.db import Database

# Any constant; several processes upgrading one PostgreSQL database take turns on it.
_UPGRADE_LOCK = 0x6B617274


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "gateway:migrations")
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def upgrade(db: Database, revision: str = "head") -> None:
    """Apply every pending migration, in one transaction where the backend allows it."""
    cfg = _config()

    def _upgrade(sync_conn: sa.Connection) -> None:
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with db.write() as conn:
        if db.is_postgres:
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _UPGRADE_LOCK})
        await conn.run_sync(_upgrade)

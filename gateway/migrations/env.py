"""Alembic environment: runs on the connection gateway.migrate hands over, or on KARTABL_DATABASE__URL."""

import asyncio
import os

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.schema import metadata

config = context.config


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    url = os.environ.get("KARTABL_DATABASE__URL", "sqlite+aiosqlite:///kartabl.db")
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # the `alembic` command itself, used by developers to write new revisions
    asyncio.run(_run_standalone())

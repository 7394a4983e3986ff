"""Alembic migrations of the Kartabl schema; applied by `kartabl db upgrade` (see gateway.migrate)."""

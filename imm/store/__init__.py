"""The store: the connection the domain writes SQL against, and the database that runs it.

``imm.store.base`` is all a domain package imports: the :class:`Connection` protocol its
functions take, ``query``/``query_one``/``now``, and :class:`Schema` for its numbered migrations.
``imm.store.sqlite`` is the backend the daemon builds (the composition root chooses it and hands
it every package's schema); another backend goes beside it without a change to the domain.
"""

from .base import (
    FENCE,
    Backend,
    Connection,
    Cursor,
    DatabaseError,
    IntegrityError,
    Migration,
    Schema,
    dialect,
    execute_script,
    fence,
    now,
    query,
    query_one,
)

__all__ = ["FENCE", "Backend", "Connection", "Cursor", "DatabaseError", "IntegrityError",
           "Migration", "Schema", "dialect", "execute_script", "fence", "now", "query",
           "query_one"]

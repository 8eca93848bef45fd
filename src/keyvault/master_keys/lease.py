"""A named lease in the database: one process at a time does the named work (the keyring's
maintenance: rotating root keys, rewrapping, removing emptied keys), on SQLite and Postgres alike.

The holder renews the lease as it works; a holder that dies (even by SIGKILL) simply stops
renewing, and another process takes over once the lease has run out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keyvault.db.engine import dialect_insert, session_scope
from keyvault.db.models import Lease


async def acquire(
    sessions: async_sessionmaker[AsyncSession],
    name: str,
    holder: str,
    ttl: timedelta,
    now: datetime,
) -> bool:
    """Take or renew the lease until `now + ttl`; False while another holder's has not run out.

    The update's row lock (Postgres) or the single writer (SQLite) orders two takers: the second
    sees the first one's holder and a lease that has not run out."""
    async with session_scope(sessions) as session:
        insert = dialect_insert(session)
        await session.execute(
            insert(Lease)
            .values(name=name, holder=holder, expires_at=now + ttl)
            .on_conflict_do_nothing(index_elements=[Lease.name])
        )
        connection = await session.connection()
        taken = await connection.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at <= now))
            .values(holder=holder, expires_at=now + ttl)
        )
        return bool(taken.rowcount == 1)


async def release(
    sessions: async_sessionmaker[AsyncSession], name: str, holder: str, now: datetime
) -> None:
    """Let the next process take the lease at once."""
    async with session_scope(sessions) as session:
        await session.execute(
            update(Lease).where(Lease.name == name, Lease.holder == holder).values(expires_at=now),
            execution_options={"synchronize_session": False},
        )

"""The same handlers on SQLAlchemy's asyncio extension over asyncpg.

Lazy loading needs an await in async code: ``await c.awaitable_attrs.owner`` is the async spelling of
the N+1, ``selectinload`` its fix. The fan-out runs one ``session.get`` per id concurrently, each task
with its own session, over a pool of 10 connections.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

from .db import async_engine
from .models import Contact, User
from .sync_app import TOKEN


async def _page(session: AsyncSession, token: str, *options) -> list[Contact]:
    user = (await session.scalars(select(User).where(User.session_token == token))).one()
    query = (select(Contact).where(Contact.team_id == user.team_id).options(*options)
             .order_by(Contact.created_at.desc(), Contact.id.desc()).limit(50))
    return list(await session.scalars(query))


async def contacts_with_owner_lazy(token: str = TOKEN) -> list[tuple[str, str]]:
    eng = async_engine()
    try:
        async with AsyncSession(eng) as session:
            return [(c.name, (await c.awaitable_attrs.owner).name) for c in await _page(session, token)]
    finally:
        await eng.dispose()


async def contacts_with_owner_selectin(token: str = TOKEN) -> list[tuple[str, str]]:
    eng = async_engine()
    try:
        async with AsyncSession(eng) as session:
            return [(c.name, c.owner.name) for c in await _page(session, token, selectinload(Contact.owner))]
    finally:
        await eng.dispose()


async def contacts_with_owner_joined(token: str = TOKEN) -> list[tuple[str, str]]:
    eng = async_engine()
    try:
        async with AsyncSession(eng) as session:
            rows = await _page(session, token, joinedload(Contact.owner, innerjoin=True))
            return [(c.name, c.owner.name) for c in rows]
    finally:
        await eng.dispose()


async def mark_contacts_reviewed_in_one_flush(token: str = TOKEN) -> None:
    """The page's contacts marked reviewed, one commit: asyncpg's executemany sends the flush's UPDATEs in
    one round trip (their owners stay: the lazy-loading workloads read them)."""
    eng = async_engine()
    try:
        async with AsyncSession(eng) as session:
            for c in await _page(session, token):
                c.name = f"{c.name.removesuffix(' (reviewed)')} (reviewed)"
            await session.commit()
    finally:
        await eng.dispose()


async def contact_cards_fan_out(token: str = TOKEN) -> list[Contact | None]:
    """50 ``session.get`` calls at once, each its own session, 10 connections."""
    eng = async_engine(pool_size=10, max_overflow=0)
    sessions = async_sessionmaker(eng, expire_on_commit=False)
    try:
        async with sessions() as session:
            user = (await session.scalars(select(User).where(User.session_token == token))).one()
            ids = (await session.scalars(select(Contact.id).where(Contact.team_id == user.team_id)
                                         .order_by(Contact.id).limit(50))).all()

        async def card(contact_id: int) -> Contact | None:
            async with sessions() as session:
                return await session.get(Contact, contact_id)

        return await asyncio.gather(*(card(i) for i in ids))
    finally:
        await eng.dispose()

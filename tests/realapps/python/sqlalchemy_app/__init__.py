"""SQLAlchemy 2 ORM app of the real-application corpus: sync over psycopg 3, async over asyncpg.

Set-up: ``Base.metadata.create_all`` and seed rows. Each workload is one handler of ``sync_app`` or
``async_app``; ``python -m tests.realapps.python.sqlalchemy_app <name>`` runs it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from tests.realapps.harness import App, Expect, Workload, python

MODULE = "tests.realapps.python.sqlalchemy_app"


def _needs() -> str | None:
    missing = [m for m in ("sqlalchemy", "psycopg", "asyncpg") if importlib.util.find_spec(m) is None]
    return f"missing {', '.join(missing)}" if missing else None


def _w(name: str, expect: Iterable[tuple[str, str]], classes: tuple[int, ...], note: str) -> Workload:
    """A workload running handler ``name``, labelled with the (kind, table) pairs a reviewer would report."""
    return Workload(name, python(MODULE, name), frozenset(Expect(k, t) for k, t in expect), classes, note)


WORKLOADS = [
    _w("sa-lazy-owner-loop", {("n_plus_one_select", "users")}, (3,),
       "c.owner lazy-loads each distinct owner of a 50-contact page (users WHERE id = ?, 13 times): "
       "selectinload/joinedload; keys come from a team-filtered page, so not cross_tenant"),
    _w("sa-selectinload-owner", (), (3, 5),
       "selectinload: one users WHERE id IN (owner ids of the page) after the page: the batched fix, "
       "not a join_candidate and not cross_tenant"),
    _w("sa-joinedload-owner", (), (3,),
       "joinedload: one query, contacts JOIN users on the foreign key; contacts pinned by team_id"),
    _w("sa-add-all-activities", (), (),
       "add_all + one commit: insertmanyvalues sends the 40 rows as one multi-row INSERT ... RETURNING"),
    _w("sa-add-commit-loop", {("n_plus_one_insert", "activities")}, (4,),
       "session.add + commit per recipient: 40 transactions of one INSERT each; add_all and one commit"),
    _w("sa-get-modify-commit-loop", {("n_plus_one_select", "leads"), ("n_plus_one_update", "leads")}, (3, 4, 9),
       "session.get + modify + commit per id of a team-filtered list: 20 SELECTs and 20 UPDATEs in 20 "
       "transactions, one loop (one UPDATE ... WHERE team_id = ? AND id = ANY(?) fixes both); not cross_tenant"),
    _w("sa-update-lead-from-url", {("cross_tenant", "leads")}, (3,),
       "PATCH /leads/<id>: session.get(Lead, id from the URL) then UPDATE by id, nothing checks the team "
       "(the lead belongs to another team)"),
    _w("sa-export-contacts-all-teams", {("cross_tenant", "contacts")}, (3,),
       "CSV export without the team filter: every team's 600 contacts"),
    _w("sa-activity-breakdown-all-teams", {("cross_tenant", "activities")}, (3,),
       "count per action over every team's activities: the aggregate lacks team_id"),
    _w("sa-leaderboard-in", {("join_candidate", "users")}, (5,),
       "top-10 user ids by activity count, then users WHERE id IN (those ids): one JOIN"),
    _w("sa-leaderboard-any", {("join_candidate", "users")}, (5,),
       "the same with text('... id = ANY(:ids)') and one array parameter: one JOIN"),
    _w("sa-leaderboard-join", (), (3, 5),
       "the fix: users JOIN (team-filtered counts) ON user_id; users reached by the foreign key, not cross_tenant"),
    _w("sa-autocommit-campaign-script", {("missing_transaction", "campaigns")}, (),
       "AUTOCOMMIT engine: INSERT campaign RETURNING id, then its recipients with that id, committed separately"),
    _w("sa-session-begin-campaign", (), (),
       "the same in one session.begin(): one transaction"),
    _w("sa-activity-feed-entities", {("select_star", "activities")}, (),
       "select(Activity) loads every column, ~1 KB of metadata jsonb per row the feed never shows "
       "(the ORM's all-columns load, no literal *): load_only/defer"),
    _w("sa-activity-feed-load-only", (), (),
       "the feed with load_only(action, description, created_at)"),
    _w("sa-async-lazy-owner-loop", {("n_plus_one_select", "users")}, (3,),
       "async: await c.awaitable_attrs.owner per contact of the page: the N+1 in asyncio"),
    _w("sa-async-selectinload-owner", (), (3, 5),
       "async with selectinload: the batched fix"),
    _w("sa-async-fan-out-get", {("n_plus_one_select", "contacts")}, (7,),
       "asyncio.gather of 50 session.get(Contact, id), a session each, over a pool of 10: the N+1 spread "
       "over 10 connections (one select ... id IN/ANY fixes it)"),
    _w("sa-flush-many-updates", (), (3, 4),
       "25 team-filtered leads modified, one commit: the flush's UPDATE per object goes by executemany in "
       "one pipelined round trip, keyed by ids the team-filtered query returned"),
    _w("sa-async-joinedload-owner", (), (3,),
       "async joinedload: contacts JOIN users on the foreign key, one query"),
    _w("sa-async-flush-many-updates", (), (3, 4),
       "async: the page's contacts marked reviewed, one commit; asyncpg's executemany sends the "
       "UPDATEs at once"),
]

APPS = [App("sqlalchemy", "ra_sqla", python(MODULE, "setup"), WORKLOADS, needs=_needs)]

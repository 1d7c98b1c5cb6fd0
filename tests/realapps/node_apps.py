"""The Node apps of the real-application corpus (tests/realapps/node, installed by ``npm ci`` there).

- drizzle-postgresjs / drizzle-pg: one Drizzle app (seeds 000/001: campaign sends, the activity
  leaderboard, the quick log, activity lists, contacts and leads) over postgres.js (``max: 10``) and
  over a node-postgres ``pg.Pool({ max: 10 })``; the same code, so each label is written once.
- typeorm: the journey/campaign app of seeds 003/004 with ``EntitySchema`` entities and "tenantId"
  columns: save() loops (a transaction per call), CSV and DID imports, executeNode, segments.
- express: an Express API over ``pg.Pool({ max: 8 })`` with 100 local requests, 8 at a time (and over a pool
  of one, one request at a time, for one team's users).

Each script takes ``setup`` or the workload's name; every connection's application_name is PGAPPNAME.
"""

from __future__ import annotations

from .harness import App, Expect, Workload, node, node_ready

Label = tuple[tuple[str, str], ...]


def _w(script: str, name: str, expect: Label, classes: tuple[int, ...], note: str) -> Workload:
    return Workload(name, node(script, name), frozenset(Expect(k, t) for k, t in expect), classes, note)


# ------------------------------------------------------------------ Drizzle (both drivers)

# (workload, expect, classes, note); {fanout} is the driver's concurrent lookup
DRIZZLE: list[tuple[str, Label, tuple[int, ...], str]] = [
    ("campaign-send-loop", (("n_plus_one_insert", "activities"),), (),
     "seed 000 F1: `await db.insert(activities).values(...)` once per recipient (40): one multi-row INSERT does it"),
    ("campaign-send-batch", (), (),
     "seed 001's fix: the activities collected in the loop, then one `db.insert(activities).values(batch)`"),
    ("leaderboard", (("join_candidate", "users"),), (5,),
     "seed 000 F3: top users by activity count, then `inArray(users.id, ids)` of exactly the ids it returned: "
     "one LEFT JOIN would do (the users read is keyed by a team-filtered result: not cross_tenant)"),
    ("leaderboard-join", (), (5,),
     "seed 000 F3's fix: one query, activities LEFT JOIN users, grouped"),
    ("quick-log", (("missing_transaction", "activities"), ("missing_transaction", "scheduled_calls")), (),
     "seed 000 F4: the activity INSERT ... RETURNING id, then the scheduled call that points at it, each autocommitted"),
    ("quick-log-tx", (), (),
     "seed 000 F4's fix: both inserts inside db.transaction()"),
    ("activity-feed-all-columns", (("select_star", "activities"),), (),
     "seed 000 F6: `db.select().from(activities)` (every column, the ~750-byte metadata jsonb too) for a list "
     "of 50; team-filtered with a LIMIT"),
    ("activity-feed-columns", (), (),
     "seed 000 F6's fix: the five columns the list shows"),
    ("contacts-with-owner", (), (3,),
     "db.query.contacts.findMany({ where: team, with: { owner: true } }): ONE statement with a lateral join to "
     "users along the foreign key: a relation load, neither an N+1 nor cross_tenant"),
    ("contacts-owner-loop", (("n_plus_one_select", "users"),), (3,),
     "the same page by hand: `db.select().from(users).where(eq(users.id, c.ownerId))` for each of 10 contacts "
     "(distinct owners): an N+1; the ids come from a team-filtered list, so not cross_tenant"),
    ("contact-update-by-id", (("cross_tenant", "contacts"),), (3,),
     "PATCH /contacts/:id: auth by session token (not a finding), then `db.update(contacts)...where(eq(id, "
     "idFromRequest))` with no tenant check anywhere: it renames team 2's contact for a team 1 user"),
    ("contact-update-scoped", (), (3,),
     "the same handler with `and(eq(contacts.id, id), eq(contacts.teamId, me.teamId))`"),
    ("leads-all-teams", (("cross_tenant", "leads"),), (3,),
     "`db.select().from(leads)` with no team filter: every team's 240 leads"),
    ("leads-team", (), (3,),
     "`db.select().from(leads).where(eq(leads.teamId, 1))`"),
    ("contact-cards-fanout", (("n_plus_one_select", "contacts"),), (7,),
     "POST /contacts/cards with 30 ids: {fanout}, each `where id = $1 and team_id = $2`: the N+1 is all 30 "
     "statements, spread over up to 10 pooled connections"),
    ("contact-cards-any", (), (5,),
     "its fix: one `where id = any($1) and team_id = $2` of the requested ids (ids from the request, not "
     "from a previous query: not a join_candidate)"),
]

FANOUT = {
    "dzp-": "`Promise.all(ids.map(id => sql`select ... where id = ${id} ...`))` over postgres.js (max: 10)",
    "dzg-": "`Promise.all(ids.map(id => pool.query('select ... where id = $1 ...', [id, team])))` over "
            "pg.Pool({ max: 10 })",
}


def _drizzle(script: str, prefix: str) -> list[Workload]:
    return [_w(script, prefix + name, expect, classes, note.replace("{fanout}", FANOUT[prefix]))
            for name, expect, classes, note in DRIZZLE]


# ------------------------------------------------------------------ TypeORM

JNE = "journey_node_executions"
TYPEORM = [
    _w("typeorm_app.js", "to-enqueue-save-loop", (("n_plus_one_insert", JNE),), (4,),
       "seed 003 §1: `await repo.save(execution)` per due contact (20): START TRANSACTION; INSERT ... RETURNING; "
       "COMMIT each time: a loop of small transactions is an N+1 insert"),
    _w("typeorm_app.js", "to-enqueue-save-array", (), (4,),
       "seed 003's fix: `repo.save(array)` of the new executions: one transaction, one multi-row INSERT"),
    _w("typeorm_app.js", "to-scheduler-save-loop", (("n_plus_one_update", JNE), ("n_plus_one_select", JNE)), (4,),
       "seed 003 §1: each pending execution (20, loaded tenant-filtered) marked done and `save(e)`d in the loop: "
       "save() re-reads the row by id (SELECT ... WHERE id = $1) then runs UPDATE in its own transaction"),
    _w("typeorm_app.js", "to-scheduler-save-array", (("n_plus_one_update", JNE),), (4,),
       "seed 003 calls `save(array)` the fix, but for updated entities TypeORM still sends one UPDATE per row "
       "(20, in one transaction, after one SELECT ... IN reload): a reviewer who knows TypeORM says "
       "`update({ id: In(ids) }, ...)`; fewer commits, the same round trips"),
    _w("typeorm_app.js", "to-scheduler-update-in", (), (4,),
       "`repo.update({ id: In(ids), tenantId }, { status, executedAt })`: one UPDATE for the batch"),
    _w("typeorm_app.js", "to-csv-import-loop",
       (("n_plus_one_select", "contacts"), ("n_plus_one_insert", "contacts"), ("n_plus_one_insert", "campaign_contacts"),
        ("missing_transaction", "contacts"), ("missing_transaction", "campaign_contacts")), (4,),
       "seed 003 §2: per CSV row (20, 12 new), findOne by phone, save() the contact if new, save() its "
       "campaign_contacts row: N+1 select and inserts; and the campaign row uses the contact's RETURNING id in "
       "another transaction (a failure leaves contacts half enrolled)"),
    _w("typeorm_app.js", "to-csv-import-bulk", (), (4,),
       "seed 003 §2's fix, done in one dataSource.transaction: `find({ phoneNumber: In(numbers), tenantId })`, "
       "save(newContacts), save(campaignContacts): one multi-row INSERT each"),
    _w("typeorm_app.js", "to-did-import-no-tx", (("n_plus_one_insert", "dids"),), (4,),
       "seed 003 §3: duplicates checked with one In() query, then `save(did, { transaction: false })` per new "
       "number (10): the same N+1 insert without the transaction wrappers"),
    _w("typeorm_app.js", "to-execute-node-loop", (("n_plus_one_select", JNE),), (9,),
       "seed 004 §1.1 executeNode over 10 nodes: findOne(this node's execution) and findOne(the previous node's "
       "COMPLETED execution, ORDER BY executedAt) per node: two shapes, ONE loop with one fix (load the "
       "contact's executions once); both shapes are n_plus_one_select on the same table, so one label covers "
       "both: whether pgloupe reports one MN+1 finding or two is the detector engineer's call"),
    _w("typeorm_app.js", "to-execute-node-batched", (), (9,),
       "seed 004 §1.1's fix: the journey contact's executions in one find(), matched to nodes in memory"),
    _w("typeorm_app.js", "to-contacts-with-owner", (), (3,),
       "`find({ relations: { owner: true }, where: { tenantId } })`: one LEFT JOIN users along the foreign "
       "key (users are not tenant-filtered themselves): not cross_tenant; 200 rows"),
    _w("typeorm_app.js", "to-contacts-with-owner-page", (), (3, 5),
       "the same with take: 25: TypeORM pages a joined find in two queries (SELECT DISTINCT ids ... LIMIT 25, "
       "then the join WHERE id IN (those 25 literal ids)): ORM internals of one find() call, which a reviewer "
       "does not report as a join_candidate"),
    _w("typeorm_app.js", "to-journey-pause-by-id", (("cross_tenant", "journeys"),), (3,),
       "PATCH /journeys/:id/pause: `findOne({ where: { id } })` with the id from the URL, no tenant check, then "
       "save(): tenant 1 pauses tenant 2's journey (the SELECT and the UPDATE)"),
    _w("typeorm_app.js", "to-journey-pause-scoped", (), (3,),
       "`findOne({ where: { id, tenantId } })` then save(): the save's own re-read and UPDATE by id follow a "
       "tenant-checked load"),
    _w("typeorm_app.js", "to-segment-not-in", (("not_in_subquery", "contacts"),), (),
       "seed 004 §1.5: contacts of the tenant `NOT IN (SELECT DISTINCT \"contactId\" FROM journey_contacts ...)`"),
    _w("typeorm_app.js", "to-segment-not-exists", (), (),
       "seed 004 §1.5's fix: NOT EXISTS"),
]

# ------------------------------------------------------------------ Express

EXPRESS = [
    _w("express_app.js", "ex-pooled-requests", (), (1,),
       "100 GET /api/dashboard, 8 at a time, pool.query in autocommit: per request the auth lookup by session "
       "token, one team page with LIMIT 20, one audit_log INSERT; consecutive requests on a pooled connection "
       "are separate pieces of work"),
    _w("express_app.js", "ex-pooled-transactions", (), (1,),
       "the same requests, each on a checked-out client between BEGIN and COMMIT"),
    _w("express_app.js", "ex-one-connection-one-team", (), (1,),
       "the same requests one after another on a pool of one, by the four users of one team: requests "
       "back to back on one connection for one tenant, not a loop"),
    _w("express_app.js", "ex-n-plus-one-endpoint", (("n_plus_one_select", "users"),), (1,),
       "as ex-pooled-requests, but one request in five is GET /api/contacts: 10 team contacts, then `select ... "
       "from users where id = $1` per contact (distinct owners), each on whatever pooled connection is free"),
]

APPS = [
    App("drizzle-postgresjs", "ra_dz_pjs", node("drizzle_postgresjs.js", "setup"),
        _drizzle("drizzle_postgresjs.js", "dzp-"), needs=node_ready),
    App("drizzle-pg", "ra_dz_pg", node("drizzle_pg.js", "setup"), _drizzle("drizzle_pg.js", "dzg-"), needs=node_ready),
    App("typeorm", "ra_typeorm", node("typeorm_app.js", "setup"), TYPEORM, needs=node_ready),
    App("express", "ra_express", node("express_app.js", "setup"), EXPRESS, needs=node_ready),
]

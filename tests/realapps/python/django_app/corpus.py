"""The Django CRM's workloads and their labels (app "django", database "ra_django").

Contacts with their owners
  dj-lazy-fk-loop          a page of 20 contacts, then contact.owner.name per row: the N+1 on users
  dj-select-related        the same page with select_related("owner"): one JOIN along the foreign key
  dj-prefetch-related      the same page with prefetch_related("owner"): users WHERE id IN (the owners)
  dj-join-candidate        values_list("contact_id") of a campaign, then contacts WHERE id IN (those ids)
Request handlers and tenant scoping
  dj-auth-dashboard        session-token login, then team-filtered pages and the global countries list
  dj-xt-email-search       contacts by e-mail with no team filter (sees every team's contacts); -safe scopes it
  dj-xt-lead-count         Lead.objects.count() for the dashboard tile (every team's leads); -safe scopes it
  dj-xt-update-by-id       filter(pk=<id from the request>).update(...) with no tenant check; -safe adds team_id
The activity timeline
  dj-activity-feed         50 full Activity rows (kilobyte metadata payloads) to show three fields; -lean: only()
  dj-deep-page             Paginator page 60 of 25: OFFSET 1475
  dj-export-list           a team's 2,000 activities in one result; dj-export-iterator streams them (.iterator())
Writes
  dj-save-loop             off-boarding: each of the leaver's contacts .save()d (filtered by team first)
  dj-delete-loop           each lost lead .delete()d
  dj-delete-cascade-loop   each unsubscribed contact .delete()d: per contact a transaction of three DELETEs
  dj-bulk-create           50 contacts in one bulk_create; dj-bulk-update: a team's contacts in one bulk_update
  dj-create-loop           Activity.objects.create() per campaign recipient
  dj-atomic-create-loop    CampaignRecipient.objects.create() per contact inside one atomic()
  dj-atomic-per-row        Lead import with atomic() around each create() (Django's IntegrityError idiom)
  dj-get-or-create-csv     seed 003's CSV import: get_or_create per row (SELECT, then BEGIN/INSERT/COMMIT)
  dj-two-writes-no-atomic  a contact and its "created" activity (FK to the new id), each autocommitted; -atomic
A web server and a test suite
  dj-web                   gunicorn, 1 worker x 4 threads, CONN_MAX_AGE=60; 80 requests from 8 client threads,
                           each: login by token, a team's contacts page (LIMIT 20), one audit_log insert
  dj-web-one-team          one thread, one client, the four users of team 1: one connection, one tenant
  dj-web-n-plus-one        the same as dj-web, half the requests to a view that reads each contact's owner lazily
  dj-suite                 21 TestCase tests (a transaction per class, a savepoint per test), ~3 rows each
  dj-transaction-suite     the same tests as TransactionTestCase (RA_SUITE_TRANSACTIONAL=1): commits, TRUNCATE after each
  dj-suite-n-plus-one      the same with RA_SUITE_N_PLUS_ONE=1: one test reads 10 owners lazily
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from ...harness import App, Expect, Workload, python

MODULE = "tests.realapps.python.django_app.workloads"
SETTINGS = {"DJANGO_SETTINGS_MODULE": "tests.realapps.python.django_app.settings"}
SUITE = ["-m", "django", "test", "tests.realapps.python.django_app.tests_suite", "--noinput", "-v", "1"]


def w(name: str, expect: Iterable[tuple[str, str]] = (), classes: tuple[int, ...] = (), note: str = "",
      argv: list[str] | None = None, env: dict[str, str] | None = None) -> Workload:
    return Workload(name, argv or python(MODULE, name), frozenset(Expect(k, t) for k, t in expect), classes,
                    note, env or {})


def suite(name: str, expect: Iterable[tuple[str, str]], note: str, env: dict[str, str]) -> Workload:
    return w(name, expect, (2,), note, argv=[sys.executable, *SUITE], env={**SETTINGS, **env})


APPS = [App("django", "ra_django", python("tests.realapps.python.django_app.setup_db"), [
    # -------------------------------------------------------------- contacts with their owners
    w("dj-lazy-fk-loop", {("n_plus_one_select", "users")}, (3,),
      "contact.owner.name per row: 20 users lookups by id; select_related('owner'). The lookups' ids come from a "
      "team-filtered page, so not cross_tenant"),
    w("dj-select-related", set(), (3,),
      "one query, contacts JOIN users ON owner_id = users.id, the page filtered by team_id: the fix"),
    w("dj-prefetch-related", set(), (3, 5),
      "users WHERE id IN (the page's owner ids) once: the batched fix; keys from a team-filtered parent"),
    w("dj-join-candidate", {("join_candidate", "contacts")}, (3, 5),
      "values_list('contact_id') only feeds contacts WHERE id IN (...): one JOIN would do; the ids came from a "
      "team-filtered query, so the second needs no team_id"),
    # -------------------------------------------------------------- request handlers and tenant scoping
    w("dj-auth-dashboard", set(), (3,),
      "login by session token (before the tenant is known), team-filtered pages, the global countries table"),
    w("dj-xt-email-search", {("cross_tenant", "contacts")}, (3,),
      "contacts WHERE email = %s with no team filter returns other teams' contacts (the shared buyer e-mails)"),
    w("dj-xt-email-search-safe", set(), (3,), "the same search with team_id = the caller's team"),
    w("dj-xt-lead-count", {("cross_tenant", "leads")}, (3, 6),
      "SELECT COUNT(*) FROM leads: the dashboard tile counts every team's leads"),
    w("dj-xt-lead-count-safe", set(), (3,), "COUNT(*) WHERE team_id = the caller's team"),
    w("dj-xt-update-by-id", {("cross_tenant", "contacts")}, (3,),
      "UPDATE contacts WHERE id = <id from the request> and no team check anywhere: renames another team's contact"),
    w("dj-xt-update-by-id-safe", set(), (3,), "UPDATE ... WHERE id = %s AND team_id = the caller's team"),
    # -------------------------------------------------------------- the activity timeline
    w("dj-activity-feed", {("select_star", "activities")}, (),
      "50 full Activity rows, each with a ~1.5 KB metadata payload, to render action/description/created_at"),
    w("dj-activity-feed-lean", set(), (), "the same feed with only('action', 'description', 'created_at')"),
    w("dj-deep-page", {("offset_pagination", "activities")}, (),
      "Paginator page 60 of 25: LIMIT 25 OFFSET 1475; keyset on created_at instead"),
    w("dj-export-list", {("unbounded_result", "activities")}, (),
      "2,000 activity rows in one result with no LIMIT (the CSV export)"),
    w("dj-export-iterator", set(), (),
      "the export through .iterator(chunk_size=500): a server-side cursor, FETCH FORWARD 500 five times; "
      "streaming one result, not a loop of queries"),
    # -------------------------------------------------------------- writes
    w("dj-save-loop", {("n_plus_one_update", "contacts")}, (3,),
      "save() per contact: 10 UPDATE contacts ... WHERE id = %s; one filter().update(owner_id=...) does it. The "
      "rows were loaded with a team filter, so not cross_tenant"),
    w("dj-delete-loop", {("n_plus_one_delete", "leads")}, (3,),
      "delete() per lost lead: 10 DELETE FROM leads WHERE id IN (%s); the queryset's delete() is one statement"),
    w("dj-delete-cascade-loop", {("n_plus_one_delete", "contacts"), ("n_plus_one_delete", "activities"),
                                 ("n_plus_one_delete", "campaign_recipients")}, (3, 4, 9),
      "delete() per contact: 8 x (BEGIN; DELETE activities; DELETE campaign_recipients; DELETE contacts; COMMIT); "
      "one loop, one fix: the queryset's delete()"),
    w("dj-bulk-create", set(), (), "50 contacts in one multi-row INSERT ... RETURNING id"),
    w("dj-bulk-update", set(), (3, 5),
      "one UPDATE ... SET name = CASE WHEN id = ... WHERE id IN (the rows just read, team-filtered): the batched fix, "
      "not a join candidate"),
    w("dj-create-loop", {("n_plus_one_insert", "activities")}, (),
      "Activity.objects.create() per recipient: 30 INSERTs; bulk_create"),
    w("dj-atomic-create-loop", {("n_plus_one_insert", "campaign_recipients")}, (),
      "atomic() makes it all-or-nothing but it is still 25 INSERTs, one per contact; bulk_create"),
    w("dj-atomic-per-row", {("n_plus_one_insert", "leads")}, (4,),
      "12 x (BEGIN; INSERT INTO leads; COMMIT): a loop of small transactions is an N+1; bulk_create"
      "(ignore_conflicts=True)"),
    w("dj-get-or-create-csv", {("n_plus_one_select", "contacts"), ("n_plus_one_insert", "contacts")}, (4,),
      "20 rows: SELECT contacts WHERE team_id AND email per row, and BEGIN; INSERT; COMMIT for the 12 new ones; "
      "one email IN (...) lookup and one bulk_create"),
    w("dj-two-writes-no-atomic", {("missing_transaction", "contacts")}, (),
      "INSERT contacts RETURNING id, then INSERT activities with that contact_id, each autocommitted"),
    w("dj-two-writes-atomic", set(), (), "the same two writes in one atomic()"),
    # -------------------------------------------------------------- a web server and a test suite
    w("dj-web", set(), (1,),
      "80 requests over 4 persistent connections: each request's auth lookup, page and audit insert are its own "
      "piece of work; consecutive requests on one connection are not a loop"),
    w("dj-web-one-team", set(), (1,),
      "gunicorn with one thread (one persistent connection), one client, the four users of one team: 80 "
      "requests back to back for one tenant on one connection are requests, not a loop"),
    w("dj-web-n-plus-one", {("n_plus_one_select", "users")}, (1,),
      "the by-owner view reads contact.owner per row: 20 users lookups by id within each of its 40 requests"),
    suite("dj-suite", set(), "21 tests, ~3 rows each, in one transaction per class with a savepoint per test: "
          "the same INSERTs across tests are not an N+1", {}),
    suite("dj-transaction-suite", set(), "the same tests as TransactionTestCase: each commits its rows and the "
          "tables are truncated after it; the same INSERTs and reads test after test are not a loop or a repeat",
          {"RA_SUITE_TRANSACTIONAL": "1"}),
    suite("dj-suite-n-plus-one", {("n_plus_one_select", "users")},
          "test_page_shows_owner_names reads 10 owners lazily: 10 users lookups by id inside one test",
          {"RA_SUITE_N_PLUS_ONE": "1"}),
])]

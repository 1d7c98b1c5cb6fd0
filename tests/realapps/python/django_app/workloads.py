"""Runs one workload of the Django CRM by name: python -m tests.realapps.python.django_app.workloads dj-...

Ids are the seed's (setup_db.py fills a fresh database, so team t's u-th user is (t-1)*14+u+1, and so on).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .setup_db import CONTACTS_PER_TEAM, USERS_PER_TEAM, contact_email, session_token

CAMPAIGNS_PER_TEAM = 4


def user(team: int, u: int) -> int:
    return (team - 1) * USERS_PER_TEAM + u + 1


def contact(team: int, j: int) -> int:
    return (team - 1) * CONTACTS_PER_TEAM + j + 1


def campaign(team: int, k: int) -> int:
    return (team - 1) * CAMPAIGNS_PER_TEAM + k + 1


def script_workloads() -> dict[str, Callable[[], object]]:
    from . import services as s

    new_rows = [{"email": f"import{i}@acme-leads.example", "name": f"Imported {i}"} for i in range(50)]
    csv_text = "email,name\n" + "".join(f"{contact_email(3, j)},Contact 3-{j}\n" for j in range(20, 28)) + "".join(
        f"new{i}@initech-fair.example,Visitor {i}\n" for i in range(12))
    return {
        # contacts with their owners
        "dj-lazy-fk-loop": lambda: s.contact_owner_names(1),
        "dj-select-related": lambda: s.contact_owner_names_joined(1),
        "dj-prefetch-related": lambda: s.contact_owner_names_prefetched(1),
        "dj-join-candidate": lambda: s.campaign_audience(1, campaign(1, 1)),
        # request handlers and tenant scoping
        "dj-auth-dashboard": lambda: s.dashboard(session_token(1, 3)),
        "dj-xt-email-search": lambda: s.search_contacts_by_email(session_token(1, 0), "buyer3@shared.example"),
        "dj-xt-email-search-safe": lambda: s.search_contacts_by_email_scoped(session_token(1, 0),
                                                                             "buyer3@shared.example"),
        "dj-xt-lead-count": lambda: s.lead_total(session_token(2, 1)),
        "dj-xt-lead-count-safe": lambda: s.lead_total_scoped(session_token(2, 1)),
        "dj-xt-update-by-id": lambda: s.rename_contact(session_token(1, 0), contact(2, 40), "Renamed by Acme"),
        "dj-xt-update-by-id-safe": lambda: s.rename_contact_scoped(session_token(1, 0), contact(1, 40), "Renamed"),
        # the activity timeline
        "dj-activity-feed": lambda: s.activity_feed(2),
        "dj-activity-feed-lean": lambda: s.activity_feed_lean(2),
        "dj-deep-page": lambda: s.activity_page(2, 60),
        "dj-export-list": lambda: s.export_activities(3),
        "dj-export-iterator": lambda: s.export_activities_streamed(3),
        # writes
        "dj-save-loop": lambda: s.reassign_contacts(1, user(1, 13), user(1, 12)),
        "dj-delete-loop": lambda: s.purge_lost_leads(1),
        "dj-delete-cascade-loop": lambda: s.erase_unsubscribed_contacts(2),
        "dj-bulk-create": lambda: s.import_contacts_bulk(3, [user(3, u) for u in range(4)], new_rows),
        "dj-bulk-update": lambda: s.normalise_contact_names(2, user(2, 5)),
        "dj-create-loop": lambda: s.log_campaign_sends(3, user(3, 0), campaign(3, 1)),
        "dj-atomic-create-loop": lambda: s.enroll_form_contacts(1, campaign(1, 0)),
        "dj-atomic-per-row": lambda: s.import_leads(2, user(2, 2), [{"title": f"Expo lead {i}"} for i in range(12)]),
        "dj-get-or-create-csv": lambda: s.import_contacts_csv(3, user(3, 1), csv_text),
        "dj-two-writes-no-atomic": lambda: s.create_contact_from_form(1, user(1, 2), {
            "email": "walk-in@prospect.example", "name": "Walk In"}),
        "dj-two-writes-atomic": lambda: s.create_contact_from_form_atomic(1, user(1, 2), {
            "email": "walk-in-2@prospect.example", "name": "Walk In Two"}),
    }


WEB = {"dj-web": ("contacts",), "dj-web-n-plus-one": ("contacts", "contacts/by-owner"), "dj-web-one-team": ("contacts",)}


def main(name: str) -> None:
    if name in WEB:
        from .webload import serve_and_load

        serve_and_load(WEB[name], one_team=name == "dj-web-one-team")
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.realapps.python.django_app.settings")
    import django

    django.setup()
    from django.db import connection

    workloads = script_workloads()
    if name not in workloads:
        raise SystemExit(f"unknown workload {name!r}; known: {', '.join([*workloads, *WEB])}")
    workloads[name]()
    connection.close()


if __name__ == "__main__":
    main(sys.argv[1])

"""python -m tests.realapps.python.sqlalchemy_app (setup | <workload name>)"""

from __future__ import annotations

import asyncio
import inspect
import sys

from . import async_app, db, seed, sync_app

HANDLERS = {
    "setup": seed.main,
    "sa-lazy-owner-loop": sync_app.contacts_with_owner_lazy,
    "sa-selectinload-owner": sync_app.contacts_with_owner_selectin,
    "sa-joinedload-owner": sync_app.contacts_with_owner_joined,
    "sa-add-all-activities": sync_app.log_campaign_sent_batched,
    "sa-add-commit-loop": sync_app.log_campaign_sent_one_by_one,
    "sa-get-modify-commit-loop": sync_app.nurture_stale_leads,
    "sa-update-lead-from-url": sync_app.update_lead_status,
    "sa-export-contacts-all-teams": sync_app.export_contacts,
    "sa-activity-breakdown-all-teams": sync_app.activity_breakdown,
    "sa-leaderboard-in": sync_app.leaderboard_in,
    "sa-leaderboard-any": sync_app.leaderboard_any,
    "sa-leaderboard-join": sync_app.leaderboard_join,
    "sa-autocommit-campaign-script": sync_app.create_campaign_script,
    "sa-session-begin-campaign": sync_app.create_campaign_in_transaction,
    "sa-activity-feed-entities": sync_app.activity_feed_entities,
    "sa-activity-feed-load-only": sync_app.activity_feed_columns,
    "sa-async-lazy-owner-loop": async_app.contacts_with_owner_lazy,
    "sa-async-selectinload-owner": async_app.contacts_with_owner_selectin,
    "sa-async-fan-out-get": async_app.contact_cards_fan_out,
    "sa-flush-many-updates": sync_app.close_stale_leads_in_one_flush,
    "sa-async-joinedload-owner": async_app.contacts_with_owner_joined,
    "sa-async-flush-many-updates": async_app.mark_contacts_reviewed_in_one_flush,
}


def main(name: str) -> None:
    handler = HANDLERS[name]
    try:
        if inspect.iscoroutinefunction(handler):
            asyncio.run(handler())
        else:
            handler()
    finally:
        db.dispose()


if __name__ == "__main__":
    main(sys.argv[1])

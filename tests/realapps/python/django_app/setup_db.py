"""Set-up: Django's own migrations, then deterministic seed rows (python -m ...django_app.setup_db).

Three teams of 14 users, 150 contacts each (owners round-robin, so a page of 20 names each owner at most twice;
the first ten emails are people who are contacts of every team), four campaigns of 30 recipients, 2,000
activities with kilobyte payloads, 40 leads per team, and a global countries table.
"""

from __future__ import annotations

import hashlib
import os
import random
from datetime import UTC, datetime, timedelta

TEAMS = ("Acme", "Globex", "Initech")
USERS_PER_TEAM = 14
CONTACTS_PER_TEAM = 150
ACTIVITIES_PER_TEAM = 2000
LEADS_PER_TEAM = 40
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
COUNTRIES = (("DE", "Germany"), ("FR", "France"), ("GB", "United Kingdom"), ("US", "United States"),
             ("NL", "Netherlands"), ("ES", "Spain"), ("IT", "Italy"), ("SE", "Sweden"), ("PL", "Poland"),
             ("CA", "Canada"), ("BR", "Brazil"), ("JP", "Japan"))


def session_token(team: int, user: int) -> str:
    """The session token of the user-th user (0-based) of the team-th team (1-based): workloads log in with it."""
    return hashlib.sha256(f"session:{team}:{user}".encode()).hexdigest()[:40]


def contact_email(team: int, j: int) -> str:
    return f"buyer{j}@shared.example" if j < 10 else f"contact{j}@{TEAMS[team - 1].lower()}.example"


def seed() -> None:
    from django.db import transaction

    from .models import Activity, Campaign, CampaignRecipient, Contact, Country, Lead, Team, User

    rng = random.Random(1603)
    actions = ("email_sent", "email_opened", "call_logged", "note_added", "meeting_booked")
    with transaction.atomic():
        Country.objects.bulk_create([Country(code=c, name=n) for c, n in COUNTRIES])
        for t, team_name in enumerate(TEAMS, start=1):
            team = Team.objects.create(name=team_name)
            users = User.objects.bulk_create([
                User(team=team, name=f"{team_name} User {u}", email=f"user{u}@{team_name.lower()}.example",
                     session_token=session_token(t, u)) for u in range(USERS_PER_TEAM)])
            contacts = Contact.objects.bulk_create([
                Contact(team=team, owner=users[j % USERS_PER_TEAM], email=contact_email(t, j),
                        name=f"Contact {t}-{j}", created_at=EPOCH + timedelta(minutes=j),
                        metadata={"source": rng.choice(("csv", "form", "api")),
                                  **({"unsubscribed": True} if j >= 142 else {})})
                for j in range(CONTACTS_PER_TEAM)])
            for k, status in enumerate(("draft", "active", "active", "done")):
                campaign = Campaign.objects.create(team=team, name=f"{team_name} campaign {k}", status=status)
                CampaignRecipient.objects.bulk_create([
                    CampaignRecipient(team=team, campaign=campaign, contact=c, email=c.email)
                    for c in contacts[30 + 30 * k:60 + 30 * k]])
            Activity.objects.bulk_create([
                Activity(team=team, user=users[a % USERS_PER_TEAM], contact=rng.choice(contacts),
                         action=(action := rng.choice(actions)), description=f"{action} #{a}",
                         created_at=EPOCH + timedelta(minutes=3 * a),
                         metadata={"subject": f"Re: proposal {a}", "headers": {"x-mailer": "crm", "thread": a},
                                   "body": " ".join(rng.choice(("pricing", "renewal", "demo", "follow", "up",
                                                                "contract", "next", "steps", "call", "team"))
                                                    for _ in range(220))})
                for a in range(ACTIVITIES_PER_TEAM)], batch_size=500)
            Lead.objects.bulk_create([
                Lead(team=team, owner=users[j % USERS_PER_TEAM], title=f"Deal {t}-{j}",
                     status=("open", "open", "won", "lost")[j % 4]) for j in range(LEADS_PER_TEAM)])


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.realapps.python.django_app.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    seed()


if __name__ == "__main__":
    main()

"""Set-up: ``Base.metadata.create_all`` and deterministic seed rows (3 teams, 40 users, 600 contacts,
12 campaigns of 40 recipients, 6,000 activities with ~1 KB of metadata each, 300 leads, 20 countries)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from .db import engine, token_for
from .models import Activity, Base, Campaign, CampaignRecipient, Contact, Country, Lead, Team, User

TEAMS = 3
USERS = 40
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
COUNTRIES = ["AU", "BR", "CA", "CH", "DE", "DK", "ES", "FI", "FR", "GB", "IE", "IN", "IT", "JP", "MX", "NL",
             "NO", "NZ", "SE", "US"]


def team_of(user_id: int) -> int:
    return 1 + (user_id - 1) % TEAMS


def main() -> None:
    rng = random.Random(20260115)
    eng = engine()
    Base.metadata.create_all(eng)
    members = {t: [u for u in range(1, USERS + 1) if team_of(u) == t] for t in range(1, TEAMS + 1)}
    with Session(eng) as session, session.begin():
        session.execute(insert(Team), [{"id": t, "name": f"Team {t}"} for t in range(1, TEAMS + 1)])
        session.execute(insert(User), [
            {"id": u, "team_id": team_of(u), "name": f"User {u}", "email": f"user{u}@example.com",
             "session_token": token_for(u)} for u in range(1, USERS + 1)])
        contacts = []
        for c in range(1, 601):
            team = 1 + c % TEAMS
            contacts.append({"id": c, "team_id": team, "owner_id": rng.choice(members[team]),
                             "email": f"contact{c}@client{c % 37}.example", "name": f"Contact {c}",
                             "meta": {"source": rng.choice(["import", "form", "api"])},
                             "created_at": NOW - timedelta(minutes=rng.randrange(90 * 24 * 60))})
        session.execute(insert(Contact), contacts)
        by_team = {t: [c for c in contacts if c["team_id"] == t] for t in members}
        campaigns, recipients = [], []
        for k in range(1, 13):
            team = 1 + k % TEAMS
            campaigns.append({"id": k, "team_id": team, "name": f"Campaign {k}", "status": "draft"})
            for c in rng.sample(by_team[team], 40):
                recipients.append({"team_id": team, "campaign_id": k, "contact_id": c["id"], "email": c["email"]})
        session.execute(insert(Campaign), campaigns)
        session.execute(insert(CampaignRecipient), recipients)
        activities = []
        for _ in range(6000):
            team = rng.randrange(1, TEAMS + 1)
            contact = rng.choice(by_team[team])
            action = rng.choice(["email_sent", "email_opened", "call", "note", "meeting"])
            activities.append({
                "team_id": team, "user_id": rng.choice(members[team]), "contact_id": contact["id"], "action": action,
                "description": f"{action} with {contact['name']}",
                "meta": {"message_id": f"<{rng.getrandbits(64):016x}@mail.example>",
                         "headers": {"from": "sales@example.com", "to": contact["email"], "x-campaign": "spring"},
                         "excerpt": " ".join(rng.choice(["hello", "pricing", "follow", "up", "demo", "next", "week"])
                                             for _ in range(150))},
                "created_at": NOW - timedelta(minutes=rng.randrange(90 * 24 * 60))})
        session.execute(insert(Activity), activities)
        session.execute(insert(Lead), [
            {"team_id": 1 + i % TEAMS, "owner_id": rng.choice(members[1 + i % TEAMS]), "title": f"Deal {i}",
             "status": rng.choice(["new", "contacted", "qualified", "stale"])} for i in range(300)])
        session.execute(insert(Country), [{"code": c, "name": f"Country {c}"} for c in COUNTRIES])
        for table in ("teams", "users", "contacts", "campaigns"):  # rows above were given their ids
            session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))

"""The CRM's request handlers and scripts, written with SQLAlchemy 2's ORM over psycopg 3.

Each function is one piece of work (a request, a job, a script). ``token`` is the session cookie.
"""

from __future__ import annotations

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session, joinedload, load_only, selectinload

from .db import engine, token_for
from .models import Activity, AuditLog, Campaign, CampaignRecipient, Contact, Lead, User

TOKEN = token_for(1)  # user 1, team 1
OTHER_TEAMS_LEAD = 2  # leads are seeded round-robin over the teams: lead 2 is team 2's


def current_user(session: Session, token: str) -> User:
    """Authentication: runs before the tenant is known."""
    return session.scalars(select(User).where(User.session_token == token)).one()


def contacts_page(session: Session, user: User, *options) -> list[Contact]:
    query = (select(Contact).where(Contact.team_id == user.team_id).options(*options)
             .order_by(Contact.created_at.desc(), Contact.id.desc()).limit(50))
    return list(session.scalars(query))


# ------------------------------------------------------------------ loading relations


def contacts_with_owner_lazy(token: str = TOKEN) -> list[tuple[str, str]]:
    """N+1: ``c.owner`` lazy-loads each distinct owner with its own SELECT."""
    with Session(engine()) as session:
        user = current_user(session, token)
        return [(c.name, c.owner.name) for c in contacts_page(session, user)]


def contacts_with_owner_selectin(token: str = TOKEN) -> list[tuple[str, str]]:
    with Session(engine()) as session:
        user = current_user(session, token)
        return [(c.name, c.owner.name) for c in contacts_page(session, user, selectinload(Contact.owner))]


def contacts_with_owner_joined(token: str = TOKEN) -> list[tuple[str, str]]:
    with Session(engine()) as session:
        user = current_user(session, token)
        return [(c.name, c.owner.name) for c in contacts_page(session, user, joinedload(Contact.owner, innerjoin=True))]


# ------------------------------------------------------------------ writes in a loop


def _recipients(session: Session, team_id: int) -> tuple[Campaign, list]:
    campaign = session.scalars(select(Campaign).where(Campaign.team_id == team_id).order_by(Campaign.id).limit(1)).one()
    rows = session.execute(select(CampaignRecipient.contact_id, CampaignRecipient.email)
                           .where(CampaignRecipient.team_id == team_id, CampaignRecipient.campaign_id == campaign.id)
                           .order_by(CampaignRecipient.id)).all()
    return campaign, rows


def log_campaign_sent_batched(token: str = TOKEN) -> None:
    """One flush: SQLAlchemy sends the 40 activity rows as one multi-row INSERT (insertmanyvalues)."""
    with Session(engine()) as session:
        user = current_user(session, token)
        campaign, rows = _recipients(session, user.team_id)
        session.add_all(Activity(team_id=user.team_id, user_id=user.id, contact_id=contact_id, action="email_sent",
                                 description=f"{campaign.name} sent to {email}",
                                 meta={"campaign_id": campaign.id, "to": email}) for contact_id, email in rows)
        campaign.status = "sent"
        session.commit()


def log_campaign_sent_one_by_one(token: str = TOKEN) -> None:
    """N+1 insert: add + commit per recipient (each commit is BEGIN; INSERT ... RETURNING; COMMIT)."""
    with Session(engine()) as session:
        user = current_user(session, token)
        team_id, user_id = user.team_id, user.id
        campaign, rows = _recipients(session, team_id)
        campaign_id, campaign_name = campaign.id, campaign.name
        for contact_id, email in rows:
            session.add(Activity(team_id=team_id, user_id=user_id, contact_id=contact_id, action="email_sent",
                                 description=f"{campaign_name} sent to {email}",
                                 meta={"campaign_id": campaign_id, "to": email}))
            session.commit()


def nurture_stale_leads(token: str = TOKEN) -> None:
    """A get + modify + commit per lead of a team-filtered list: 20 SELECTs and 20 UPDATEs, 20 transactions."""
    with Session(engine()) as session:
        team_id = current_user(session, token).team_id
        ids = session.scalars(select(Lead.id).where(Lead.team_id == team_id, Lead.status == "stale")
                              .order_by(Lead.id).limit(20)).all()
        for lead_id in ids:
            lead = session.get(Lead, lead_id)
            lead.status = "nurture"
            session.commit()


def close_stale_leads_in_one_flush(token: str = TOKEN) -> None:
    """The team's stale leads loaded, each modified, one commit: the unit of work flushes one UPDATE per
    object, sent with executemany (psycopg pipelines it: one round trip)."""
    with Session(engine()) as session:
        team_id = current_user(session, token).team_id
        leads = session.scalars(select(Lead).where(Lead.team_id == team_id, Lead.status == "stale")
                                .order_by(Lead.id).limit(25)).all()
        for lead in leads:
            lead.status = "closed"
        session.commit()


# ------------------------------------------------------------------ tenant isolation


def update_lead_status(lead_id: int = OTHER_TEAMS_LEAD, status: str = "won", token: str = TOKEN) -> None:
    """PATCH /leads/<id>: the id comes from the URL and nothing checks lead.team_id == user.team_id."""
    with Session(engine()) as session:
        user = current_user(session, token)
        lead = session.get(Lead, lead_id)
        lead.status = status
        session.add(AuditLog(team_id=user.team_id, user_id=user.id, action=f"lead {lead_id} -> {status}"))
        session.commit()


def export_contacts(token: str = TOKEN) -> list:
    """CSV export: the team filter was forgotten, every team's contacts come back."""
    with Session(engine()) as session:
        current_user(session, token)
        return session.execute(select(Contact.id, Contact.name, Contact.email).order_by(Contact.id)).all()


def activity_breakdown(token: str = TOKEN) -> list:
    """Dashboard widget: counts per action, over every team's activities."""
    with Session(engine()) as session:
        current_user(session, token)
        return session.execute(select(Activity.action, func.count()).group_by(Activity.action)).all()


# ------------------------------------------------------------------ leaderboard


def _top_user_ids(session: Session, team_id: int) -> list[int]:
    return session.scalars(select(Activity.user_id).where(Activity.team_id == team_id).group_by(Activity.user_id)
                           .order_by(func.count().desc(), Activity.user_id).limit(10)).all()


def leaderboard_in(token: str = TOKEN) -> list:
    """Top users, then their names with ``User.id.in_(ids)`` (an expanding IN list)."""
    with Session(engine()) as session:
        user = current_user(session, token)
        ids = _top_user_ids(session, user.team_id)
        return list(session.scalars(select(User).where(User.id.in_(ids))))


def leaderboard_any(token: str = TOKEN) -> list:
    """Top users, then their names with ``= ANY(:ids)`` and the list bound as one array parameter."""
    with Session(engine()) as session:
        user = current_user(session, token)
        ids = _top_user_ids(session, user.team_id)
        return session.execute(text("SELECT id, name, email FROM users WHERE id = ANY(:ids)"), {"ids": ids}).all()


def leaderboard_join(token: str = TOKEN) -> list:
    with Session(engine()) as session:
        user = current_user(session, token)
        counts = (select(Activity.user_id, func.count().label("n")).where(Activity.team_id == user.team_id)
                  .group_by(Activity.user_id).subquery())
        return session.execute(select(User.id, User.name, counts.c.n).join(counts, counts.c.user_id == User.id)
                               .order_by(counts.c.n.desc(), User.id).limit(10)).all()


# ------------------------------------------------------------------ related writes


def create_campaign_script(team_id: int = 1) -> None:
    """An ops script on an AUTOCOMMIT engine: the campaign and its recipients commit separately."""
    eng = engine(isolation_level="AUTOCOMMIT")
    with eng.connect() as conn:
        contacts = conn.execute(select(Contact.id, Contact.email).where(Contact.team_id == team_id)
                                .order_by(Contact.id).limit(30)).all()
        campaign_id = conn.execute(insert(Campaign).values(team_id=team_id, name="Spring webinar", status="draft")
                                   .returning(Campaign.id)).scalar_one()
        conn.execute(insert(CampaignRecipient), [{"team_id": team_id, "campaign_id": campaign_id, "contact_id": c.id,
                                                  "email": c.email} for c in contacts])


def create_campaign_in_transaction(team_id: int = 1) -> None:
    with Session(engine()) as session, session.begin():
        contacts = session.execute(select(Contact.id, Contact.email).where(Contact.team_id == team_id)
                                   .order_by(Contact.id).limit(30)).all()
        campaign = Campaign(team_id=team_id, name="Spring webinar", status="draft")
        campaign.recipients = [CampaignRecipient(team_id=team_id, contact_id=c.id, email=c.email) for c in contacts]
        session.add(campaign)


# ------------------------------------------------------------------ wide columns


def activity_feed_entities(token: str = TOKEN) -> list:
    """The user's feed loads whole Activity rows: each drags ~1 KB of metadata jsonb it never shows."""
    with Session(engine()) as session:
        user = current_user(session, token)
        acts = session.scalars(select(Activity).where(Activity.team_id == user.team_id, Activity.user_id == user.id)
                               .order_by(Activity.created_at.desc()).limit(50))
        return [(a.action, a.description, a.created_at) for a in acts]


def activity_feed_columns(token: str = TOKEN) -> list:
    with Session(engine()) as session:
        user = current_user(session, token)
        acts = session.scalars(select(Activity).where(Activity.team_id == user.team_id, Activity.user_id == user.id)
                               .options(load_only(Activity.action, Activity.description, Activity.created_at))
                               .order_by(Activity.created_at.desc()).limit(50))
        return [(a.action, a.description, a.created_at) for a in acts]

"""The CRM's service layer: the code each workload runs, written the way a Django team writes it (the
anti-patterns and their fixes side by side; corpus.py says which is which)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from django.core.paginator import Paginator
from django.db import IntegrityError, transaction

from .models import Activity, Campaign, CampaignRecipient, Contact, Country, Lead, User

PAGE = 20


class Unauthorized(Exception):
    pass


def authenticate(token: str) -> User:
    """The login lookup: by session token, before the tenant is known."""
    user = User.objects.filter(session_token=token).first()
    if user is None:
        raise Unauthorized
    return user


def now() -> datetime:
    return datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


# ------------------------------------------------------------------ reading contacts with their owners


def contact_owner_names(team_id: int) -> list[tuple[str, str]]:
    """One query for the page, then one users query per contact (contact.owner is a lazy foreign key)."""
    return [(c.name, c.owner.name) for c in Contact.objects.filter(team_id=team_id).order_by("id")[:PAGE]]


def contact_owner_names_joined(team_id: int) -> list[tuple[str, str]]:
    page = Contact.objects.filter(team_id=team_id).select_related("owner").order_by("id")[:PAGE]
    return [(c.name, c.owner.name) for c in page]


def contact_owner_names_prefetched(team_id: int) -> list[tuple[str, str]]:
    page = Contact.objects.filter(team_id=team_id).prefetch_related("owner").order_by("id")[:PAGE]
    return [(c.name, c.owner.name) for c in page]


def campaign_audience(team_id: int, campaign_id: int) -> list[dict]:
    """The recipients' ids first, then their contacts: two queries where one join would do."""
    contact_ids = list(CampaignRecipient.objects.filter(team_id=team_id, campaign_id=campaign_id)
                       .values_list("contact_id", flat=True))
    return list(Contact.objects.filter(id__in=contact_ids).values("id", "name", "email"))


# ------------------------------------------------------------------ writes, one row at a time and in bulk


def reassign_contacts(team_id: int, leaver_id: int, successor_id: int) -> int:
    """Off-boarding: the leaver's contacts go to a successor, one save() each."""
    moved = 0
    for contact in Contact.objects.filter(team_id=team_id, owner_id=leaver_id):
        contact.owner_id = successor_id
        contact.save()
        moved += 1
    return moved


def purge_lost_leads(team_id: int) -> None:
    for lead in Lead.objects.filter(team_id=team_id, status="lost"):
        lead.delete()


def erase_unsubscribed_contacts(team_id: int) -> None:
    """GDPR erasure: each delete() cascades to the contact's activities and campaign entries in a transaction."""
    for contact in Contact.objects.filter(team_id=team_id, metadata__unsubscribed=True):
        contact.delete()


def import_contacts_bulk(team_id: int, owner_ids: list[int], rows: list[dict]) -> list[Contact]:
    return Contact.objects.bulk_create([
        Contact(team_id=team_id, owner_id=owner_ids[i % len(owner_ids)], email=row["email"], name=row["name"],
                metadata={"source": "csv"}, created_at=now()) for i, row in enumerate(rows)])


def normalise_contact_names(team_id: int, owner_id: int) -> None:
    contacts = list(Contact.objects.filter(team_id=team_id, owner_id=owner_id))
    for contact in contacts:
        contact.name = contact.name.upper()
    Contact.objects.bulk_update(contacts, ["name"])


def log_campaign_sends(team_id: int, user_id: int, campaign_id: int) -> None:
    """After a send: one activity row per recipient, one create() each."""
    for recipient in CampaignRecipient.objects.filter(team_id=team_id, campaign_id=campaign_id):
        Activity.objects.create(team_id=team_id, user_id=user_id, contact_id=recipient.contact_id,
                                action="email_sent", description=f"campaign {campaign_id}",
                                metadata={"campaign_id": campaign_id}, created_at=now())


def enroll_form_contacts(team_id: int, campaign_id: int) -> None:
    """All or nothing, but still one INSERT per contact inside the transaction."""
    with transaction.atomic():
        campaign = Campaign.objects.get(team_id=team_id, pk=campaign_id)
        for contact in Contact.objects.filter(team_id=team_id, metadata__source="form").order_by("-created_at")[:25]:
            CampaignRecipient.objects.create(team_id=team_id, campaign=campaign, contact=contact, email=contact.email)


def import_leads(team_id: int, owner_id: int, rows: list[dict]) -> tuple[int, int]:
    """Each row in its own atomic() so one bad row does not abort the import (Django's documented idiom)."""
    created = skipped = 0
    for row in rows:
        try:
            with transaction.atomic():
                Lead.objects.create(team_id=team_id, owner_id=owner_id, title=row["title"], status="open")
            created += 1
        except IntegrityError:
            skipped += 1
    return created, skipped


def import_contacts_csv(team_id: int, owner_id: int, text: str) -> int:
    """The CSV import of seed 003: find-then-create per row (get_or_create)."""
    created_count = 0
    for row in csv.DictReader(io.StringIO(text)):
        _, created = Contact.objects.get_or_create(
            team_id=team_id, email=row["email"],
            defaults={"name": row["name"], "owner_id": owner_id, "metadata": {"source": "csv"}, "created_at": now()})
        created_count += created
    return created_count


def create_contact_from_form(team_id: int, user_id: int, form: dict) -> Contact:
    """The new contact and its 'created' activity, each autocommitted: a crash between them loses the history."""
    contact = Contact.objects.create(team_id=team_id, owner_id=user_id, email=form["email"], name=form["name"],
                                     metadata={"source": "form"}, created_at=now())
    Activity.objects.create(team_id=team_id, user_id=user_id, contact=contact, action="contact_created",
                            description=f"{form['name']} added from the web form", metadata={}, created_at=now())
    return contact


@transaction.atomic
def create_contact_from_form_atomic(team_id: int, user_id: int, form: dict) -> Contact:
    contact = Contact.objects.create(team_id=team_id, owner_id=user_id, email=form["email"], name=form["name"],
                                     metadata={"source": "form"}, created_at=now())
    Activity.objects.create(team_id=team_id, user_id=user_id, contact=contact, action="contact_created",
                            description=f"{form['name']} added from the web form", metadata={}, created_at=now())
    return contact


# ------------------------------------------------------------------ request handlers: tenant scoping


def search_contacts_by_email(token: str, email: str) -> list[dict]:
    authenticate(token)
    return list(Contact.objects.filter(email=email).values("id", "name", "email")[:10])  # every team's contacts


def search_contacts_by_email_scoped(token: str, email: str) -> list[dict]:
    user = authenticate(token)
    return list(Contact.objects.filter(team_id=user.team_id, email=email).values("id", "name", "email")[:10])


def lead_total(token: str) -> int:
    authenticate(token)
    return Lead.objects.count()  # the dashboard tile counts every team's leads


def lead_total_scoped(token: str) -> int:
    user = authenticate(token)
    return Lead.objects.filter(team_id=user.team_id).count()


def rename_contact(token: str, contact_id: int, name: str) -> int:
    authenticate(token)
    return Contact.objects.filter(pk=contact_id).update(name=name)  # any team's contact, by the id in the request


def rename_contact_scoped(token: str, contact_id: int, name: str) -> int:
    user = authenticate(token)
    return Contact.objects.filter(pk=contact_id, team_id=user.team_id).update(name=name)


def dashboard(token: str) -> dict:
    """The home page: who is calling, then their team's pages (and the global countries for a picker)."""
    user = authenticate(token)
    return {
        "contacts": list(Contact.objects.filter(team_id=user.team_id).order_by("-created_at")
                         .values("id", "name", "email")[:PAGE]),
        "open_leads": list(Lead.objects.filter(team_id=user.team_id, status="open").values("id", "title")[:PAGE]),
        "campaigns": list(Campaign.objects.filter(team_id=user.team_id).values("id", "name", "status")),
        "countries": list(Country.objects.order_by("name").values_list("code", "name")),
    }


# ------------------------------------------------------------------ the activity timeline


def activity_feed(team_id: int) -> list[dict]:
    """The timeline renders three fields but loads every column, payloads included."""
    recent = Activity.objects.filter(team_id=team_id).order_by("-created_at")[:50]
    return [{"action": a.action, "description": a.description, "at": a.created_at} for a in recent]


def activity_feed_lean(team_id: int) -> list[dict]:
    recent = Activity.objects.filter(team_id=team_id).order_by("-created_at").only("action", "description",
                                                                                   "created_at")[:50]
    return [{"action": a.action, "description": a.description, "at": a.created_at} for a in recent]


def activity_page(team_id: int, number: int) -> list[dict]:
    timeline = Activity.objects.filter(team_id=team_id).order_by("-created_at").values("id", "action", "created_at")
    return list(Paginator(timeline, 25).page(number))


def export_activities(team_id: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    for row in Activity.objects.filter(team_id=team_id).order_by("id").values_list("id", "action", "created_at"):
        writer.writerow(row)
    return out.getvalue()


def export_activities_streamed(team_id: int) -> str:
    """The export through a server-side cursor, 500 rows a fetch."""
    out = io.StringIO()
    writer = csv.writer(out)
    rows = Activity.objects.filter(team_id=team_id).order_by("id").values_list("id", "action", "created_at")
    for row in rows.iterator(chunk_size=500):
        writer.writerow(row)
    return out.getvalue()

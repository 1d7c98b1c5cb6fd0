"""Each test creates a few rows and reads them back through the ORM, scoped to its team."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from django.db.models import Count
from django.test import TestCase, TransactionTestCase

from ..models import Activity, AuditLog, Campaign, CampaignRecipient, Contact, Country, Lead, Team, User

LAZY_OWNERS = os.environ.get("RA_SUITE_N_PLUS_ONE") == "1"
# RA_SUITE_TRANSACTIONAL=1: TransactionTestCase, whose tests commit and whose tables are truncated after each
BASE = TransactionTestCase if os.environ.get("RA_SUITE_TRANSACTIONAL") == "1" else TestCase
T0 = datetime(2024, 3, 1, tzinfo=UTC)


class CrmTestCase(BASE):
    def setUp(self):
        if BASE is TransactionTestCase:  # no class-wide rows there: they are made again for every test
            type(self).setUpTestData()

    @classmethod
    def setUpTestData(cls):
        cls.team = Team.objects.create(name="Acme")
        cls.other = Team.objects.create(name="Globex")
        cls.owner = User.objects.create(team=cls.team, name="Olive Owner", email="olive@acme.example",
                                        session_token="suite-olive")

    def contact(self, n: int, team: Team | None = None, **metadata) -> Contact:
        return Contact.objects.create(team=team or self.team, owner=self.owner, email=f"c{n}@example.com",
                                      name=f"Contact {n}", metadata=metadata, created_at=T0 + timedelta(hours=n))


class ContactTests(CrmTestCase):
    def test_created_contacts_are_listed(self):
        for n in range(3):
            self.contact(n)
        self.assertEqual(Contact.objects.filter(team=self.team).count(), 3)

    def test_newest_first(self):
        for n in range(3):
            self.contact(n)
        names = list(Contact.objects.filter(team=self.team).order_by("-created_at").values_list("name", flat=True))
        self.assertEqual(names, ["Contact 2", "Contact 1", "Contact 0"])

    def test_email_search_is_team_scoped(self):
        self.contact(1)
        self.contact(1, team=self.other)
        self.contact(2)
        found = Contact.objects.filter(team=self.team, email="c1@example.com")
        self.assertEqual([c.team_id for c in found], [self.team.id])

    def test_metadata_round_trips(self):
        self.contact(1, source="form", tags=["vip"])
        self.contact(2, source="csv")
        self.contact(3)
        vip = Contact.objects.filter(team=self.team, metadata__tags__contains=["vip"])
        self.assertEqual([c.name for c in vip], ["Contact 1"])

    def test_rename_within_team(self):
        c = self.contact(1)
        self.contact(2)
        updated = Contact.objects.filter(team=self.team, pk=c.pk).update(name="Renamed")
        self.assertEqual(updated, 1)
        self.assertTrue(Contact.objects.filter(team=self.team, name="Renamed").exists())

    def test_delete_within_team(self):
        c = self.contact(1)
        self.contact(2)
        self.contact(3)
        Contact.objects.filter(team=self.team, pk=c.pk).delete()
        self.assertEqual(Contact.objects.filter(team=self.team).count(), 2)

    def test_owner_contact_counts(self):
        for n in range(3):
            self.contact(n)
        counts = dict(User.objects.filter(team=self.team).annotate(n=Count("contacts")).values_list("name", "n"))
        self.assertEqual(counts, {"Olive Owner": 3})

    def test_page_shows_owner_names(self):
        owners = User.objects.bulk_create([
            User(team=self.team, name=f"Owner {i}", email=f"owner{i}@acme.example", session_token=f"suite-o{i}")
            for i in range(10)])
        Contact.objects.bulk_create([
            Contact(team=self.team, owner=o, email=f"p{i}@example.com", name=f"Page {i}", created_at=T0)
            for i, o in enumerate(owners)])
        page = Contact.objects.filter(team=self.team).order_by("id")
        if not LAZY_OWNERS:
            page = page.select_related("owner")
        self.assertEqual([c.owner.name for c in page], [f"Owner {i}" for i in range(10)])


class CampaignTests(CrmTestCase):
    def campaign(self, name: str = "Spring", status: str = "draft") -> Campaign:
        return Campaign.objects.create(team=self.team, name=name, status=status)

    def test_campaign_is_created_as_draft(self):
        Campaign.objects.create(team=self.team, name="Spring")
        self.assertEqual(list(Campaign.objects.filter(team=self.team).values_list("status", flat=True)), ["draft"])

    def test_active_campaigns(self):
        self.campaign("A", "active")
        self.campaign("B", "done")
        self.campaign("C", "active")
        active = Campaign.objects.filter(team=self.team, status="active").order_by("name")
        self.assertEqual([c.name for c in active], ["A", "C"])

    def test_recipients_are_added_in_bulk(self):
        campaign = self.campaign()
        contacts = [self.contact(1), self.contact(2)]
        CampaignRecipient.objects.bulk_create([
            CampaignRecipient(team=self.team, campaign=campaign, contact=c, email=c.email) for c in contacts])
        self.assertEqual(CampaignRecipient.objects.filter(team=self.team, campaign=campaign).count(), 2)

    def test_recipient_copies_contact_email(self):
        campaign = self.campaign()
        c = self.contact(7)
        CampaignRecipient.objects.create(team=self.team, campaign=campaign, contact=c, email=c.email)
        emails = CampaignRecipient.objects.filter(team=self.team, campaign=campaign).values_list("email", flat=True)
        self.assertEqual(list(emails), ["c7@example.com"])

    def test_recipient_counts_per_campaign(self):
        a, b = self.campaign("A"), self.campaign("B")
        c = self.contact(1)
        CampaignRecipient.objects.create(team=self.team, campaign=a, contact=c, email=c.email)
        counts = dict(Campaign.objects.filter(team=self.team).annotate(n=Count("recipients"))
                      .values_list("name", "n"))
        self.assertEqual(counts, {"A": 1, "B": 0})
        self.assertEqual(b.status, "draft")

    def test_campaigns_of_other_teams_are_hidden(self):
        self.campaign("Ours")
        Campaign.objects.create(team=self.other, name="Theirs")
        self.assertEqual(list(Campaign.objects.filter(team=self.team).values_list("name", flat=True)), ["Ours"])

    def test_finish_campaign(self):
        campaign = self.campaign("Spring", "active")
        self.campaign("Summer", "active")
        Campaign.objects.filter(team=self.team, pk=campaign.pk).update(status="done")
        self.assertEqual(Campaign.objects.filter(team=self.team, status="done").count(), 1)


class LeadAndActivityTests(CrmTestCase):
    def test_leads_by_status(self):
        for status in ("open", "won", "open"):
            Lead.objects.create(team=self.team, owner=self.owner, title=f"Deal {status}", status=status)
        by_status = dict(Lead.objects.filter(team=self.team).values_list("status").annotate(n=Count("id")))
        self.assertEqual(by_status, {"open": 2, "won": 1})

    def test_lead_defaults_to_open(self):
        Lead.objects.create(team=self.team, owner=self.owner, title="Deal")
        self.assertTrue(Lead.objects.filter(team=self.team, status="open").exists())

    def test_activity_timeline(self):
        c = self.contact(1)
        for n, action in enumerate(("email_sent", "email_opened")):
            Activity.objects.create(team=self.team, user=self.owner, contact=c, action=action, description=action,
                                    created_at=T0 + timedelta(minutes=n))
        timeline = Activity.objects.filter(team=self.team).order_by("-created_at").values_list("action", flat=True)
        self.assertEqual(list(timeline), ["email_opened", "email_sent"])

    def test_activities_of_a_contact(self):
        c = self.contact(1)
        Activity.objects.create(team=self.team, user=self.owner, contact=c, action="call_logged", description="",
                                created_at=T0)
        self.assertEqual(Activity.objects.filter(team=self.team, contact=c).count(), 1)

    def test_audit_row_per_action(self):
        for action in ("contacts.list", "contacts.export", "leads.list"):
            AuditLog.objects.create(team=self.team, user=self.owner, action=action)
        actions = AuditLog.objects.filter(team=self.team).order_by("id").values_list("action", flat=True)
        self.assertEqual(list(actions)[0], "contacts.list")

    def test_countries_picker(self):
        Country.objects.bulk_create([Country(code="DE", name="Germany"), Country(code="FR", name="France")])
        self.assertEqual(list(Country.objects.order_by("name").values_list("code", flat=True)), ["FR", "DE"])

"""The CRM's tables: multi-tenant by team_id, foreign keys and team indexes the way a careful team has them.

Table names are the schema's (db_table), not Django's app_model default, so findings name the same tables as
the other apps of the corpus.
"""

from __future__ import annotations

from django.db import models


class Team(models.Model):
    name = models.CharField(max_length=120)

    class Meta:
        db_table = "teams"


class User(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="users")
    name = models.CharField(max_length=120)
    email = models.CharField(max_length=254)
    session_token = models.CharField(max_length=64, unique=True)

    class Meta:
        db_table = "users"


class Contact(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="contacts")
    owner = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, related_name="contacts")
    email = models.CharField(max_length=254)
    name = models.CharField(max_length=120)
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "contacts"
        indexes = [models.Index(fields=["team", "email"], name="contacts_team_email_idx")]


class Campaign(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="campaigns")
    name = models.CharField(max_length=120)
    status = models.CharField(max_length=20, default="draft")

    class Meta:
        db_table = "campaigns"


class CampaignRecipient(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="recipients")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="campaign_entries")
    email = models.CharField(max_length=254)

    class Meta:
        db_table = "campaign_recipients"


class Activity(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="activities")
    action = models.CharField(max_length=40)
    description = models.TextField()
    metadata = models.JSONField(default=dict)  # the raw email/event payload: kilobytes per row
    created_at = models.DateTimeField()

    class Meta:
        db_table = "activities"
        indexes = [models.Index(fields=["team", "-created_at"], name="activities_team_created_idx")]


class Lead(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="leads")
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=20, default="open")

    class Meta:
        db_table = "leads"


class AuditLog(models.Model):
    """One row per request: who did what, when."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    action = models.CharField(max_length=80)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "audit_log"


class Country(models.Model):
    """A global reference table: no team_id."""

    code = models.CharField(max_length=2, primary_key=True)
    name = models.CharField(max_length=80)

    class Meta:
        db_table = "countries"

"""The CRM schema, written by hand (the way the team keeps its first migration readable)."""

import django.db.models.deletion
from django.db import migrations, models


def fk(to, **kw):
    return models.ForeignKey(on_delete=kw.pop("on_delete", django.db.models.deletion.CASCADE), to=to, **kw)


def pk():
    return models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Team",
            fields=[("id", pk()), ("name", models.CharField(max_length=120))],
            options={"db_table": "teams"},
        ),
        migrations.CreateModel(
            name="User",
            fields=[
                ("id", pk()),
                ("team", fk("django_app.team", related_name="users")),
                ("name", models.CharField(max_length=120)),
                ("email", models.CharField(max_length=254)),
                ("session_token", models.CharField(max_length=64, unique=True)),
            ],
            options={"db_table": "users"},
        ),
        migrations.CreateModel(
            name="Contact",
            fields=[
                ("id", pk()),
                ("team", fk("django_app.team", related_name="contacts")),
                ("owner", fk("django_app.user", null=True, on_delete=django.db.models.deletion.SET_NULL,
                             related_name="contacts")),
                ("email", models.CharField(max_length=254)),
                ("name", models.CharField(max_length=120)),
                ("metadata", models.JSONField(default=dict)),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "db_table": "contacts",
                "indexes": [models.Index(fields=["team", "email"], name="contacts_team_email_idx")],
            },
        ),
        migrations.CreateModel(
            name="Campaign",
            fields=[
                ("id", pk()),
                ("team", fk("django_app.team", related_name="campaigns")),
                ("name", models.CharField(max_length=120)),
                ("status", models.CharField(default="draft", max_length=20)),
            ],
            options={"db_table": "campaigns"},
        ),
        migrations.CreateModel(
            name="CampaignRecipient",
            fields=[
                ("id", pk()),
                ("team", fk("django_app.team")),
                ("campaign", fk("django_app.campaign", related_name="recipients")),
                ("contact", fk("django_app.contact", related_name="campaign_entries")),
                ("email", models.CharField(max_length=254)),
            ],
            options={"db_table": "campaign_recipients"},
        ),
        migrations.CreateModel(
            name="Activity",
            fields=[
                ("id", pk()),
                ("team", fk("django_app.team")),
                ("user", fk("django_app.user")),
                ("contact", fk("django_app.contact", related_name="activities")),
                ("action", models.CharField(max_length=40)),
                ("description", models.TextField()),
                ("metadata", models.JSONField(default=dict)),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "db_table": "activities",
                "indexes": [models.Index(fields=["team", "-created_at"], name="activities_team_created_idx")],
            },
        ),
        migrations.CreateModel(
            name="Lead",
            fields=[
                ("id", pk()),
                ("team", fk("django_app.team")),
                ("owner", fk("django_app.user", related_name="leads")),
                ("title", models.CharField(max_length=200)),
                ("status", models.CharField(default="open", max_length=20)),
            ],
            options={"db_table": "leads"},
        ),
        migrations.CreateModel(
            name="AuditLog",
            fields=[
                ("id", pk()),
                ("team", fk("django_app.team")),
                ("user", fk("django_app.user")),
                ("action", models.CharField(max_length=80)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"db_table": "audit_log"},
        ),
        migrations.CreateModel(
            name="Country",
            fields=[
                ("code", models.CharField(max_length=2, primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=80)),
            ],
            options={"db_table": "countries"},
        ),
    ]

"""The CRM's JSON views: each request authenticates by session token, reads one team-filtered page and writes an
audit row (served by gunicorn with threads and persistent connections in the web-server workloads)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from .models import AuditLog, Contact, User

PAGE = 20


def authenticate(request: HttpRequest) -> User | None:
    token = request.COOKIES.get("session")
    if not token:
        return None
    return User.objects.filter(session_token=token).first()


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def contacts(request: HttpRequest) -> JsonResponse:
    """The contacts page: the newest contacts of the caller's team."""
    user = authenticate(request)
    if user is None:
        return JsonResponse({"error": "unauthorized"}, status=401)
    page = list(Contact.objects.filter(team_id=user.team_id).order_by("-created_at")
                .values("id", "name", "email")[:PAGE])
    AuditLog.objects.create(team_id=user.team_id, user=user, action="contacts.list")
    return JsonResponse({"contacts": page})


def contacts_by_owner(request: HttpRequest) -> JsonResponse:
    """The same page with each contact's owner: written with a lazy foreign key per row (the N+1)."""
    user = authenticate(request)
    if user is None:
        return JsonResponse({"error": "unauthorized"}, status=401)
    page = Contact.objects.filter(team_id=user.team_id).order_by("-created_at")[:PAGE]
    rows = [{"id": c.id, "name": c.name, "owner": c.owner.name if c.owner_id else None} for c in page]
    AuditLog.objects.create(team_id=user.team_id, user=user, action="contacts.by_owner")
    return JsonResponse({"contacts": rows})

from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz),
    path("contacts", views.contacts),
    path("contacts/by-owner", views.contacts_by_owner),
]

"""Included at the root by manallm.urls."""
from django.urls import path

from . import api, views

urlpatterns = [
    path("v1/health", views.health_detail, name="health-detail"),
    path("v1/health/<str:provider>/reset", api.BreakerResetView.as_view(), name="health-reset"),
    path("health", views.liveness, name="health"),
    path("ready", views.readiness, name="ready"),
]

"""Included at the root by manallm.urls."""
from django.urls import path

from . import views

urlpatterns = [
    path("v1/health", views.health_detail, name="health-detail"),
    path("v1/health/<str:provider>/reset", views.health_reset, name="health-reset"),
    path("health", views.liveness, name="health"),
]

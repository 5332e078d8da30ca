from django.urls import path

from .usage_api import UsageView

urlpatterns = [
    path("v1/usage", UsageView.as_view(), name="usage"),
]

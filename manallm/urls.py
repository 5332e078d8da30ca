from django.contrib import admin
from django.urls import include, path
from django_prometheus.exports import ExportToDjangoView

# The OpenAI paths first: Django tries the patterns in order on every request (the
# patterns of the apps below never overlap theirs).
urlpatterns = [
    path("", include("routing.urls")),
    path("", include("health.urls")),
    path("", include("consumers.urls")),
    path("", include("consumers.usage_urls")),
    path("metrics", ExportToDjangoView, name="prometheus-metrics"),
    path("admin/", admin.site.urls),
]

handler404 = "manallm.views.not_found"
handler500 = "manallm.views.server_error"

from django.contrib import admin
from django.urls import include, path
from django_prometheus.exports import ExportToDjangoView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", ExportToDjangoView, name="prometheus-metrics"),
    path("", include("health.urls")),
    path("", include("routing.urls")),
    path("", include("consumers.urls")),
    path("", include("consumers.usage_urls")),
]

handler404 = "manallm.views.not_found"
handler500 = "manallm.views.server_error"

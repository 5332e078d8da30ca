from django.urls import path
from rest_framework.routers import SimpleRouter

from . import api, views



class ManagementRouter(SimpleRouter):
    """DRF's router with the detail actions (``<name>/route``, ``<name>/history``) tried
    before the detail route: an alias name holds a slash and the detail lookup takes any
    character, so in DRF's order ``mana/x/route`` would be read as one name."""

    routes = [SimpleRouter.routes[i] for i in (0, 1, 3, 2)]


# The management API: DRF's router (alias-list, alias-detail), no trailing slash as in /v1.
management = ManagementRouter(trailing_slash=False)
management.register("v1/aliases", api.AliasViewSet, basename="alias")

urlpatterns = [
    path("v1/chat/completions", views.chat_completions, name="chat-completions"),
    path("v1/embeddings", views.embeddings, name="embeddings"),
    path("v1/models", views.models_list, name="models"),
    path("v1/models/<path:model_id>", views.model_detail, name="model-detail"),
    *management.urls,
]

from django.urls import path

from . import api, views

urlpatterns = [
    path("v1/chat/completions", views.chat_completions, name="chat-completions"),
    path("v1/embeddings", views.embeddings, name="embeddings"),
    path("v1/models", views.models_list, name="models"),
    path("v1/models/<path:model_id>", views.model_detail, name="model-detail"),
    path("v1/aliases", api.AliasListView.as_view(), name="aliases"),
    path("v1/aliases/<path:name>", api.AliasDetailView.as_view(), name="alias-detail"),
]

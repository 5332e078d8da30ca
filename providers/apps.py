from django.apps import AppConfig
from django.core.signals import setting_changed


class ProvidersConfig(AppConfig):
    name = "providers"

    def ready(self):
        setting_changed.connect(_settings_changed)


def _settings_changed(setting, **kwargs):
    if setting in {"PROVIDERS", "CONNECT_TIMEOUT", "OLLAMA_TOOL_FAMILIES"}:
        from . import registry

        registry.reset()

from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"

    def ready(self) -> None:
        from manallm import background

        from . import signals  # noqa: F401  (connects the alias-change receivers)
        from .table import aliases

        # Every serving process keeps the alias table in memory, loaded and polled.
        background.register(aliases)

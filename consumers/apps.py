from django.apps import AppConfig


class ConsumersConfig(AppConfig):
    """Consumers (README#consumers): keys, scopes, limits and usage, held in memory per process."""

    name = "consumers"

    def ready(self) -> None:
        from manallm import background

        from . import signals  # noqa: F401  (connects the consumer-change receivers)
        from .table import consumers

        background.register(consumers)

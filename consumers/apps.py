from django.apps import AppConfig


class ConsumersConfig(AppConfig):
    """Consumers (README#consumers): keys, scopes, limits and usage, held in memory per process."""

    name = "consumers"

    def ready(self) -> None:
        from manallm import background

        from . import keys, signals  # noqa: F401  (signals connects the consumer-change receivers)
        from .table import consumers

        background.register(consumers)
        background.on_start(keys.start_writer)  # keys' last use, written every few seconds
        background.on_shutdown(keys.flush_last_used)

from django.apps import AppConfig


class ConsumersConfig(AppConfig):
    """Consumers (README#consumers): keys, scopes, limits and usage, held in memory per process."""

    name = "consumers"

    def ready(self) -> None:
        from django.conf import settings

        from manallm import background, exchange

        from . import keys, signals  # noqa: F401  (signals connects the consumer-change receivers)
        from .limits import limiter
        from .table import consumers
        from .usage import book, flush_on_shutdown

        background.register(consumers)
        background.on_start(keys.start_writer)  # keys' last use, written every few seconds
        background.on_shutdown(keys.flush_last_used)
        # Usage: summed per request, flushed every USAGE_FLUSH_SECONDS by the poller (after
        # the consumers, whose budgets it reads) and once more on a graceful stop.
        background.register(book)
        background.on_shutdown(flush_on_shutdown)
        exchange.on_finish(book.record)
        limiter.configure(settings.REDIS_URL)

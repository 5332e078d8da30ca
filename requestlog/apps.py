from django.apps import AppConfig


class RequestlogConfig(AppConfig):
    """The request log (README#request-log): a row per failed, fallen-over or limited
    request (or every request), written in batches off the request path."""

    name = "requestlog"
    verbose_name = "Request log"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from manallm import background, exchange, housekeeping

        from .buffer import request_log
        from .models import RequestLogEntry

        exchange.on_finish(request_log.record)
        # Polled (= flushed) every STATE_POLL_INTERVAL on the DB thread, and flushed on a graceful stop.
        background.register(request_log)
        background.on_shutdown(request_log.shutdown)
        # Retention: the prober prunes hourly (manage.py probe_providers).
        housekeeping.every(3600, "prune_request_log", RequestLogEntry.objects.prune)

"""The request log's rows (README#request-log): one finished request each, never its content.

A row holds what an operator needs to answer "which requests fell over in the last
hour, and why": who asked for what, what served it, the entries passed over with their
reasons, how it ended and how long it took. Never a message, never a key: the row is
built from the request's ``Exchange`` (manallm.exchange), which holds neither.
"""
import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class RequestLogQuerySet(models.QuerySet):
    def prune(self, days: float | None = None, now: datetime.datetime | None = None) -> int:
        """Delete the rows older than ``days`` (REQUEST_LOG_DAYS) before ``now``; -> rows deleted."""
        days = settings.REQUEST_LOG_DAYS if days is None else days
        cutoff = (now or timezone.now()) - datetime.timedelta(days=days)
        deleted, _ = self.filter(time__lt=cutoff).delete()
        return deleted


class RequestLogEntry(models.Model):
    time = models.DateTimeField(db_index=True, help_text="When the request finished.")
    request_id = models.CharField(max_length=128, db_index=True)
    consumer = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, help_text="chat or embeddings")
    streaming = models.BooleanField(default=False)
    requested = models.CharField("requested model", max_length=300, blank=True, default="")
    target = models.CharField("resolved target", max_length=300, blank=True, default="")
    attempts = models.JSONField(default=list, blank=True,
                                help_text='The entries passed over before the serving one: [{"model", "reason"}].')
    status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True, default="")
    latency_ms = models.PositiveIntegerField("latency (ms)")
    first_token_ms = models.PositiveIntegerField("time to first token (ms)", null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cache = models.CharField("cache result", max_length=8, blank=True, default="")
    limited = models.CharField("refused by limit", max_length=16, blank=True, default="")

    objects = RequestLogQuerySet.as_manager()

    class Meta:
        ordering = ["-time", "-id"]
        verbose_name = "request log entry"
        verbose_name_plural = "request log"

    def __str__(self) -> str:
        return f"{self.request_id} {self.requested} {self.status}"

"""Persisted circuit-breaker state (docs/architecture.md#routing), shared by every worker and the prober.

One row per breaker. Workers keep an in-memory copy (``health.board.breakers``) and write
a row only when its state changes; ``updated_at`` orders concurrent writers (a row
replaces a process's copy only when it is newer).
"""
from django.db import models


class Breaker(models.Model):
    key = models.CharField(max_length=255, unique=True,
                           help_text='"ollama" for a provider, "openrouter/anthropic/claude-3-haiku" for a deployment')
    provider = models.CharField(max_length=64, db_index=True)
    model = models.CharField(max_length=255, blank=True, default="", help_text="empty for the provider breaker")
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True, default="")
    last_check = models.FloatField(null=True, blank=True, help_text="unix seconds")
    unhealthy_until = models.FloatField(null=True, blank=True, help_text="unix seconds; null: closed")
    updated_at = models.FloatField(default=0.0, help_text="unix seconds of the last state change")

    class Meta:
        ordering = ["provider", "model"]
        verbose_name = "circuit breaker"

    def __str__(self):
        return self.key

    def state(self):
        """The pure ``health.breaker.Breaker`` value of this row."""
        from .breaker import Breaker as State

        return State(
            key=self.key,
            provider=self.provider,
            model=self.model,
            consecutive_failures=self.consecutive_failures,
            last_error=self.last_error,
            last_check=self.last_check,
            unhealthy_until=self.unhealthy_until,
            updated_at=self.updated_at,
        )

"""Consumers, their keys, usage rows and prices (README#consumers).

A key is stored only as its SHA-256 hash and an 8-character display prefix; the key
itself exists once, in the answer that issued it. Usage rows are per consumer name (not
a foreign key): the built-in consumers ``env``, ``admin`` and ``anonymous`` have no row
here, and a deleted consumer's usage stays readable.
"""
from django.db import models

from manallm.models import Counter

BUDGET_PERIODS = (("day", "day"), ("month", "month"))


class Consumer(models.Model):
    name = models.CharField(max_length=64, unique=True)
    description = models.TextField(blank=True, default="")
    active = models.BooleanField(default=True)
    allowed_models = models.JSONField(default=list, blank=True,
                                      help_text="Patterns: an exact model name, or a prefix ending in * (mana/*). "
                                                "Empty: every model.")
    rpm = models.PositiveIntegerField(null=True, blank=True, help_text="Requests per minute; empty: no limit.")
    tpm = models.PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute; empty: no limit.")
    max_concurrent = models.PositiveIntegerField(null=True, blank=True,
                                                 help_text="Requests and open streams in flight; empty: no limit.")
    token_budget = models.PositiveBigIntegerField(null=True, blank=True,
                                                  help_text="Tokens per budget period; empty: no budget.")
    budget_period = models.CharField(max_length=8, choices=BUDGET_PERIODS, blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ConsumerKey(models.Model):
    consumer = models.ForeignKey(Consumer, related_name="keys", on_delete=models.CASCADE)
    prefix = models.CharField(max_length=8, db_index=True)
    hash = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["created"]

    def __str__(self) -> str:
        return f"mk-{self.prefix}…"


class UsageHour(models.Model):
    """One consumer × requested model × serving target × hour (UTC) of usage."""

    consumer = models.CharField(max_length=64)
    model = models.CharField(max_length=300)
    target = models.CharField(max_length=300, blank=True, default="")
    hour = models.DateTimeField()
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cache_hits = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["consumer", "model", "target", "hour"], name="usage_hour_key")]
        indexes = [models.Index(fields=["hour"]), models.Index(fields=["consumer", "hour"])]


class Price(models.Model):
    """USD per million tokens for one target (the aliases file's ``prices:``)."""

    target = models.CharField(max_length=200, unique=True)
    prompt = models.DecimalField(max_digits=12, decimal_places=6)
    completion = models.DecimalField(max_digits=12, decimal_places=6)

    class Meta:
        ordering = ["target"]

    def __str__(self) -> str:
        return self.target


class Revision(Counter):
    """A counter bumped in the same transaction as every consumer, key or price change
    (consumers.signals); each process polls it and reloads its in-memory table when it moved."""

    ROW = "consumers"

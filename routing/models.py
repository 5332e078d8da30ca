from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from manallm.models import Counter

from .validators import (AliasError, AliasSpec, EntrySpec, validate_alias_name, validate_first_token_timeout,
                         validate_target)


def _as_field_error(check, value):
    try:
        check(value)
    except AliasError as exc:
        raise ValidationError(exc.reason) from exc


# Field validators delegating to routing.validators (module-level so migrations can name them).
def alias_name_validator(value):
    _as_field_error(validate_alias_name, value)


def target_validator(value):
    _as_field_error(validate_target, value)


def first_token_timeout_validator(value):
    _as_field_error(validate_first_token_timeout, value)


class DefaultAliasProtected(AliasError):
    """Deleting the default alias would leave requests that name no model unserved."""

    code = "default_alias"

    def __init__(self, name: str):
        super().__init__(f"{name!r} is the default alias; make another alias the default first.",
                         alias=name, field="name")

    def __str__(self) -> str:
        return self.reason


class AliasQuerySet(models.QuerySet):
    """The alias writes every writer shares (the API, the YAML import, the admin), so the
    rules they keep are written once: a chain replaced whole, the default mark moved, the
    default never deleted."""

    def put(self, spec: AliasSpec, *, default: bool = False) -> tuple["Alias", bool]:
        """Create or replace the alias ``spec`` describes (validated by routing.validators),
        its chain in order, and mark it the default if asked; one transaction.

        Returns ``(alias, created)``. ``default=False`` leaves the mark where it is.
        """
        with changing(spec.name):
            alias, created = self.update_or_create(name=spec.name, defaults={
                "description": spec.description, "stream_continuation": spec.stream_continuation,
                "cache_ttl": spec.cache_ttl})
            alias.set_chain(spec.chain)
            if default:
                alias.make_default()
        return alias, created

    def check_deletable(self) -> None:
        """Raise DefaultAliasProtected when this selection holds the default alias.

        Called before every delete an operator asks for. A plain ``QuerySet.delete()``
        stays unguarded: it is the raw tool (tests, wiping a database).
        """
        default = self.filter(is_default=True).values_list("name", flat=True).first()
        if default is not None:
            raise DefaultAliasProtected(default)

    def delete(self) -> tuple[int, dict[str, int]]:
        """Delete the selection, each alias's deletion recorded in its history (AliasChange)."""
        with changing(*self.values_list("name", flat=True)):
            return super().delete()


class Alias(models.Model):
    name = models.CharField(max_length=100, unique=True, validators=[alias_name_validator],
                            help_text="mana/<class>, e.g. mana/long-form")
    description = models.TextField(blank=True)
    is_default = models.BooleanField("default", default=False,
                                     help_text="Serves requests that name no model. Exactly one alias is the default.")
    stream_continuation = models.BooleanField(
        default=False, help_text="Continue a stream cut after its first token on a chain entry marked "
                                 "'prefill' instead of ending it with an error (README#stream-continuation).")
    cache_ttl = models.PositiveIntegerField(
        default=0, help_text="Seconds a repeated request is answered from the response cache; 0: no cache "
                             "(README#response-cache).")

    objects = AliasQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "aliases"
        constraints = [
            models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="one_default_alias"),
        ]

    def __str__(self):
        return self.name

    def get_constraints(self):
        # Form validation must not refuse marking another alias the default: save() moves
        # the mark from the previous one (the constraint still guards the database).
        return [(model, [c for c in constraints if c.name != "one_default_alias"])
                for model, constraints in super().get_constraints()]

    def save(self, *args, **kwargs):
        # Marking this alias the default takes the mark from the previous one. Recorded:
        # a rename is this name's creation and the old name's deletion.
        names = [self.name]
        if self.pk is not None:
            names += Alias.objects.filter(pk=self.pk).values_list("name", flat=True)
        if self.is_default:
            names += Alias.objects.filter(is_default=True).exclude(pk=self.pk).values_list("name", flat=True)
        with changing(*names):
            if self.is_default:
                Alias.objects.filter(is_default=True).exclude(pk=self.pk).update(is_default=False)
            super().save(*args, **kwargs)

    def make_default(self) -> None:
        """Serve requests that name no model with this alias (save() moves the mark)."""
        if not self.is_default:
            self.is_default = True
            self.save()

    def delete(self, *args, **kwargs):
        """Refuse to delete the default alias (DefaultAliasProtected); the database, not
        this instance, says which alias is the default (another writer may have moved it)."""
        with changing(self.name):
            Alias.objects.filter(pk=self.pk).check_deletable()
            return super().delete(*args, **kwargs)

    def specs(self) -> list[EntrySpec]:
        return [entry.spec() for entry in self.entries.all()]

    def spec(self) -> AliasSpec:
        """This alias as the validator's value (``spec().to_data()`` is its YAML/API form)."""
        return AliasSpec(self.name, self.description, tuple(self.specs()), self.stream_continuation,
                         self.cache_ttl)

    def set_chain(self, specs) -> None:
        """Replace the chain with these EntrySpecs, in order."""
        with changing(self.name):
            self.entries.all().delete()
            ChainEntry.objects.bulk_create(
                ChainEntry(alias=self, position=i, target=spec.target, enabled=spec.enabled,
                           first_token_timeout=spec.first_token_timeout, prefill=spec.prefill)
                for i, spec in enumerate(specs)
            )
            Revision.bump()  # bulk_create sends no post_save


class ChainEntry(models.Model):
    alias = models.ForeignKey(Alias, related_name="entries", on_delete=models.CASCADE)
    position = models.PositiveIntegerField(default=0, db_index=True)
    target = models.CharField(max_length=200, validators=[target_validator],
                              help_text="provider/model, e.g. groq/llama-3.1-8b-instant")
    enabled = models.BooleanField(default=True)
    first_token_timeout = models.FloatField(
        null=True, blank=True, validators=[first_token_timeout_validator],
        help_text="Seconds to the first token before falling over (empty: FIRST_TOKEN_TIMEOUT).")
    prefill = models.BooleanField(
        default=False, help_text="The model continues a trailing assistant message: it may finish a stream "
                                 "another entry cut (README#stream-continuation).")

    class Meta:
        ordering = ["position", "id"]
        verbose_name = "chain entry"
        verbose_name_plural = "chain"

    def __str__(self):
        return self.target

    def spec(self) -> EntrySpec:
        return EntrySpec(self.target, self.enabled, self.first_token_timeout, self.prefill)


class Revision(Counter):
    """A counter bumped in the same transaction as every alias change (routing.signals).

    Each server process polls this one row and reloads its in-memory alias table (routing.table) only when
    the number moved, so the request path never queries aliases.
    """

    ROW = "aliases"


# --- history (README#alias-history) --------------------------------------------------


class AliasChange(models.Model):
    """One committed change of one alias: who, when, and the alias before and after it.

    ``alias`` is the name, not a key, so a deleted alias's history stays. ``before`` and
    ``after`` are the alias in its aliases-file mapping form (``AliasSpec.to_data()``,
    plus ``"default": true`` while it is the default alias); None where it did not exist.
    Written by ``recorded`` in the transaction of the change itself.
    """

    CREATED, UPDATED, DELETED, RESTORED = "created", "updated", "deleted", "restored"
    ACTIONS = [(a, a) for a in (CREATED, UPDATED, DELETED, RESTORED)]

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, help_text="admin:<username>, api:<consumer>, import_aliases or sighup")
    action = models.CharField(max_length=10, choices=ACTIONS)
    alias = models.CharField(max_length=100, db_index=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "alias change"

    def __str__(self):
        return f"{self.alias} {self.action} by {self.actor}"

    @property
    def version(self) -> dict | None:
        """The alias as this change left it (for a deletion: as it was deleted)."""
        return self.after if self.after is not None else self.before


UNKNOWN_ACTOR = "unknown"  # a write outside the four paths (a shell, a test)


def alias_state(name: str) -> dict | None:
    """The alias as history records it, or None when there is no such alias."""
    alias = Alias.objects.filter(name=name).prefetch_related("entries").first()
    if alias is None:
        return None
    data = alias.spec().to_data()
    if alias.is_default:
        data["default"] = True
    return data


class Recording:
    """The aliases one change touches, each as it was before the change's first write."""

    def __init__(self, actor: str, action: str | None):
        self.actor, self.action = actor, action
        self.before: dict[str, dict | None] = {}
        self.changes: list[AliasChange] = []  # what write() recorded

    def touch(self, name: str) -> None:
        if name and name not in self.before:
            self.before[name] = alias_state(name)

    def write(self) -> None:
        """One AliasChange per touched alias that differs now; none when nothing changed."""
        now = timezone.now()
        changes = []
        for name, before in self.before.items():
            after = alias_state(name)
            if after == before:
                continue
            if after is None:
                action = AliasChange.DELETED
            else:
                action = self.action or (AliasChange.CREATED if before is None else AliasChange.UPDATED)
            changes.append(AliasChange(at=now, actor=self.actor, action=action, alias=name,
                                       before=before, after=after))
        self.changes = AliasChange.objects.bulk_create(changes)


_recording: ContextVar[Recording | None] = ContextVar("alias_recording", default=None)


@contextmanager
def recorded(actor: str | None = None, action: str | None = None) -> Iterator[Recording]:
    """Record the alias writes made inside as one change by ``actor`` (README#alias-history).

    Each entry path opens one around its writes (``admin:<username>``, ``api:<consumer>``,
    ``import_aliases``, ``sighup``; ``action="restored"`` for a restore); the model
    layer's writes open one too (``changing``), which joins the enclosing one, so every
    write is recorded at this one point, in the transaction of the change. A write with
    no enclosing one is recorded by itself, as ``unknown``.
    """
    current = _recording.get()
    if current is not None:
        yield current
        return
    recording = Recording(actor or UNKNOWN_ACTOR, action)
    token = _recording.set(recording)
    try:
        with transaction.atomic():
            yield recording
            recording.write()
    finally:
        _recording.reset(token)


@contextmanager
def changing(*names: str) -> Iterator[None]:
    """One write of the model layer to these aliases: a transaction, recorded (``recorded``)."""
    with recorded() as recording:
        for name in names:
            recording.touch(name)
        yield

"""Consumer keys (README#consumers): issued here, checked from memory on every request.

A key is ``mk-`` and 40 URL-safe characters from ``secrets``; the database keeps its
SHA-256 and the 8 characters after ``mk-`` (the prefix an operator sees). ``issue``
returns the key once. ``directory`` is what manallm's ClientKeyMiddleware hands to
``manallm.auth.client_identity``: a presented ``mk-`` key is looked up by its hash in the
in-memory table (consumers.table), never in the database, and refused with a 401 that says
revoked / expired / deactivated without naming the consumer.

A key's last use is noted in memory on the request path and written in the background
at most every ``LAST_USED_SECONDS`` (one UPDATE per used key, no revision bump).
"""
from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime

from manallm import background
from manallm.errors import AuthenticationFailed

from .table import KEY_PREFIX, consumers, key_hash

logger = logging.getLogger("manallm.consumers")

KEY_BYTES = 30  # 30 random bytes are 40 URL-safe characters
PREFIX_CHARS = 8
LAST_USED_SECONDS = 5.0

_last_used: dict[str, float] = {}  # key hash -> Unix seconds of its latest use, not yet written
_writer: dict[str, asyncio.Task | None] = {"task": None}


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def issue(consumer, expires_at: datetime | None = None):
    """Create a key for ``consumer`` (a Consumer row): returns (ConsumerKey, the key itself).
    The key is not stored and cannot be read again."""
    from .models import ConsumerKey

    while True:
        key = new_key()
        prefix = key[len(KEY_PREFIX):len(KEY_PREFIX) + PREFIX_CHARS]
        if not ConsumerKey.objects.filter(prefix=prefix).exists():  # prefixes name keys in the API and admin
            break
    row = ConsumerKey.objects.create(consumer=consumer, prefix=prefix, hash=key_hash(key), expires_at=expires_at)
    return row, key


def revoke(row) -> None:
    """Revoke a key (kept, so the admin and the API still list it); revoking twice keeps the first time."""
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        row.save(update_fields=["revoked_at"])


class Directory:
    """The consumer keys as manallm.auth.client_identity asks about them (memory only)."""

    def identify(self, key: str) -> str | None:
        """The consumer a key authenticates as; None when it is no consumer key (no ``mk-``).
        Raises AuthenticationFailed for an unknown, revoked or expired key or a deactivated
        consumer: the message says which of these, never the consumer's name."""
        if not key.startswith(KEY_PREFIX):
            return None
        digest = key_hash(key)
        record = consumers.snapshot.keys.get(digest)
        if record is None:
            raise AuthenticationFailed("Invalid API key: no such key is issued by this gateway.")
        if record.revoked:
            raise AuthenticationFailed("This API key was revoked.", code="key_revoked")
        now = consumers.now()
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationFailed("This API key has expired.", code="key_expired")
        consumer = consumers.get(record.consumer)
        if consumer is None or not consumer.active:
            raise AuthenticationFailed("This API key belongs to a deactivated consumer.", code="consumer_inactive")
        _last_used[digest] = now
        return record.consumer

    def exist(self) -> bool:
        """Whether any consumer key exists (revoked and expired ones too): then the gateway
        no longer serves keyless calls (README#consumers)."""
        return consumers.any_keys


directory = Directory()


def pending_last_use(digest: str) -> float | None:
    """This process's latest use of a key not yet written (the API shows the newer of both)."""
    return _last_used.get(digest)


def write_last_used() -> None:
    """Write the noted last uses (sync, on the DB thread); what fails is kept for the next try."""
    from .models import ConsumerKey

    for digest, when in dict(_last_used).items():
        # An UPDATE, not save(): no signal, no revision bump (nothing to enforce changed).
        # A failure leaves this and the rest pending; flush_last_used logs it.
        ConsumerKey.objects.filter(hash=digest).update(last_used=datetime.fromtimestamp(when, UTC))
        if _last_used.get(digest) == when:
            del _last_used[digest]


async def _write_forever() -> None:
    while True:
        await asyncio.sleep(LAST_USED_SECONDS)
        await flush_last_used()


async def flush_last_used() -> None:
    """Write the noted last uses now (also the graceful stop's hook); never raises."""
    if not _last_used:
        return
    try:
        await background.run_db(write_last_used)
    except Exception as exc:
        logger.warning("could not write keys' last use (kept for the next try): %s", exc)


def start_writer() -> None:
    """background.on_start hook: the periodic writer of keys' last use, in this event loop."""
    task = _writer["task"]
    if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
        _writer["task"] = asyncio.get_running_loop().create_task(_write_forever())

"""Every committed alias change, by any path, moves the revision and refreshes this process."""
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from manallm.background import announce_from_sync

from .models import Alias, ChainEntry, Revision
from .table import aliases


@receiver(post_save, sender=Alias)
@receiver(post_delete, sender=Alias)
@receiver(post_save, sender=ChainEntry)
@receiver(post_delete, sender=ChainEntry)
def alias_changed(**kwargs) -> None:
    Revision.bump()
    transaction.on_commit(_refresh_table)


def _refresh_table():
    # The writing process serves its own change on the next request; the others pick
    # it up from the revision within STATE_POLL_INTERVAL, or at once when announced.
    aliases.invalidate()
    announce_from_sync()

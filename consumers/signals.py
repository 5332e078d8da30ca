"""Every committed consumer, key or price change, by any path, moves the revision and
refreshes this process (the others follow within a poll, or at once when announced)."""
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from manallm.background import announce_from_sync

from .models import Consumer, ConsumerKey, Price, Revision
from .table import consumers


@receiver(post_save, sender=Consumer)
@receiver(post_delete, sender=Consumer)
@receiver(post_save, sender=ConsumerKey)
@receiver(post_delete, sender=ConsumerKey)
@receiver(post_save, sender=Price)
@receiver(post_delete, sender=Price)
def consumer_changed(update_fields=None, **kwargs) -> None:
    if update_fields is not None and set(update_fields) <= {"last_used"}:
        return  # a key's last use, written in the background: nothing to enforce
    Revision.bump()
    transaction.on_commit(_refresh_table)


def _refresh_table():
    consumers.invalidate()
    announce_from_sync()

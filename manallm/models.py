"""The manallm app's one model: the abstract revision counter the apps' tables follow
(manallm.revision)."""
from django.db import models
from django.db.models import F


class Counter(models.Model):
    """One named counter row; a subclass names its row with ``ROW``."""

    name = models.CharField(max_length=50, primary_key=True)
    number = models.BigIntegerField(default=0)

    ROW = ""

    class Meta:
        abstract = True

    @classmethod
    def bump(cls) -> None:
        """Move the counter (call inside the transaction of the change it announces)."""
        if not cls.objects.filter(name=cls.ROW).update(number=F("number") + 1):
            cls.objects.get_or_create(name=cls.ROW, defaults={"number": 1})

    @classmethod
    def current(cls) -> int:
        return cls.objects.filter(name=cls.ROW).values_list("number", flat=True).first() or 0

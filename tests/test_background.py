"""manallm.background: what each server process runs beside its requests."""
import asyncio

import pytest

from manallm import background
from routing.models import Alias
from routing.table import aliases


@pytest.mark.django_db(transaction=True)
async def test_concurrent_first_requests_all_wait_for_the_first_load():
    # A burst right after start must not see an empty registry (a valid alias as 404).
    await asyncio.to_thread(_make_alias)
    aliases.snapshot = type(aliases.snapshot)()  # as in a fresh process

    async def first_request():
        await background.ensure_started()
        return "mana/burst" in aliases.snapshot.aliases  # what this request would resolve

    assert await asyncio.gather(*(first_request() for _ in range(20))) == [True] * 20
    background.stop()


def _make_alias():
    Alias.objects.create(name="mana/burst").entries.create(position=0, target="groq/x")

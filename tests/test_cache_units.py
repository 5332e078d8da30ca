"""The response cache's parts without a server (README#response-cache): the key, the
in-process LRU's expiry and bound on an injected clock, ``Age`` and an unreadable entry
through the real lookup, and ``cache_ttl`` in the admin (Django's test client)."""
import json
import time

import pytest

from routing import cache
from routing.cache_backends import ENTRY_OVERHEAD, LRUBackend
from tests.helpers import FakeClock, chat

QWEN = "ollama/qwen2.5:7b"


def test_the_key_covers_consumer_alias_and_call_type_and_ignores_key_order():
    body = {"model": "mana/a", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    key = cache.cache_key("env", "mana/a", "chat", body)
    reordered = {"temperature": 0, "messages": [{"content": "x", "role": "user"}], "stream": True,
                 "stream_options": {"include_usage": True}, "user": "u", "metadata": {"m": 1}}
    assert cache.cache_key("env", "mana/a", "chat", reordered) == key
    assert cache.cache_key("team-a", "mana/a", "chat", body) != key
    assert cache.cache_key("env", "mana/b", "chat", body) != key
    assert cache.cache_key("env", "mana/a", "embeddings", body) != key
    assert cache.cache_key("env", "mana/a", "chat", {**body, "temperature": 1}) != key


# --- the in-process LRU ----------------------------------------------------------------------


async def test_the_lru_expires_an_entry_after_its_ttl():
    clock = FakeClock()
    lru = LRUBackend(10_000, clock)
    lru.put("a", b"answer", 60)
    clock.advance(59.9)
    assert await lru.get("a") == b"answer"
    clock.advance(0.1)
    assert await lru.get("a") is None
    assert len(lru) == 0 and lru.size == 0


async def test_the_lru_keeps_within_its_bound_dropping_the_least_recently_used():
    value = b"x" * 800
    cost = len("k0") + len(value) + ENTRY_OVERHEAD
    lru = LRUBackend(3 * cost, FakeClock())
    for name in ("k0", "k1", "k2"):
        lru.put(name, value, 60)
    assert await lru.get("k0") == value  # k0 is now the most recently used
    lru.put("k3", value, 60)
    assert lru.size <= lru.max_bytes and len(lru) == 3
    assert await lru.get("k1") is None  # the least recently used went
    assert [await lru.get(name) for name in ("k0", "k2", "k3")] == [value] * 3
    lru.put("huge", b"x" * (4 * cost), 60)  # bigger than the whole cache: not stored, nothing evicted
    assert await lru.get("huge") is None and len(lru) == 3
    lru.put("k0", b"short", 60)  # replacing an entry replaces its size
    assert lru.size == 2 * cost + len("k0") + len(b"short") + ENTRY_OVERHEAD


@pytest.mark.django_db
@pytest.mark.parametrize("ttl, saved", [("120", 120), ("", 0), (str(30 * 24 * 3600 + 1), None)])
def test_the_admin_edits_cache_ttl_through_the_one_validator(client, django_user_model, ttl, saved):
    from routing.models import Alias

    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    response = client.post("/admin/routing/alias/add/", {
        "name": "mana/admin-ttl", "description": "", "cache_ttl": ttl, "entries-TOTAL_FORMS": "1",
        "entries-INITIAL_FORMS": "0", "entries-MIN_NUM_FORMS": "0", "entries-MAX_NUM_FORMS": "1000",
        "entries-0-position": "0", "entries-0-target": QWEN, "entries-0-enabled": "on"})
    if saved is None:
        assert response.status_code == 200 and "from 0 to 2592000 (30 days)" in response.content.decode()
        assert not Alias.objects.filter(name="mana/admin-ttl").exists()
    else:
        assert response.status_code == 302
        assert Alias.objects.get(name="mana/admin-ttl").spec().cache_ttl == saved


@pytest.fixture
def cached_alias():
    """This process serves ``mana/c`` (cache_ttl 60) from an LRU, its time and Age on a FakeClock."""
    from routing.table import AliasView, Entry, Snapshot, aliases

    saved, clock = aliases.snapshot, FakeClock()
    aliases.snapshot = Snapshot(1, {"mana/c": AliasView("mana/c", "", (Entry("ollama", "q"),), cache_ttl=60)},
                                "mana/c")
    cache.responses.clock = clock
    cache.responses.use(LRUBackend(1 << 20, clock))
    yield clock
    aliases.snapshot = saved
    cache.responses.clock = time.time
    cache.responses.use(None)


def pending(text):
    """This process's cache part in an anonymous chat request to ``mana/c`` (no server)."""
    from django.test import RequestFactory

    from manallm.exchange import Exchange

    return cache.begin(RequestFactory().post("/v1/chat/completions"), chat("mana/c", text),
                       Exchange("r", "anonymous", "chat", requested="mana/c"))


async def test_age_counts_from_the_store_and_the_entry_expires_with_the_alias_ttl(cached_alias):
    from manallm.errors import json_response
    from routing.served import Served
    from routing.table import Entry

    answer = {"id": "a", "object": "chat.completion", "created": 1, "model": "ollama/q",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    assert await pending("age").lookup() is None
    served = Served(Entry("ollama", "q"), "mana/c", [], answer)
    pending("age").answered(json_response(answer, headers=served.headers()), served)
    cached_alias.advance(42)
    hit = await pending("age").lookup()
    assert (hit["X-Mana-LLM-Cache"], hit["Age"], hit["X-Mana-LLM-Resolved"]) == ("hit", "42", "ollama/q")
    assert json.loads(hit.content) == answer
    cached_alias.advance(18)  # 60 s after the store: gone
    assert await pending("age").lookup() is None


async def test_an_entry_this_version_cannot_read_is_a_bypass_not_an_error(cached_alias):
    unreadable = pending("unreadable")
    cache.responses.backend.put(unreadable.key, b"not an entry", 60)
    assert await unreadable.lookup() is None and unreadable.exchange.cache == "bypass"

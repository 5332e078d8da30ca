"""The steady-state request path reads no database (docs/architecture.md#routing: "workers keep an in-memory
copy so the hot path reads no database").

In process, through Django's AsyncClient and the full middleware stack, with the
providers pointed at the fake upstream. After one warm-up request (which loads alias and
breaker state on the background DB thread), every SQL statement executed in *any* thread
is counted — the CursorWrapper is patched at class level, and new connections are
watched too — while chat requests (plain, streamed, with a fallback answered by the next
entry) and an embeddings request are served. The state poller is parked by a long
STATE_POLL_INTERVAL so its periodic reads do not count against the request path.
(Django's CaptureQueriesContext cannot be used here: it opens a connection from the event
loop, which Django refuses; the class-level patch sees the loop thread's queries too.)
"""
import threading
from unittest import mock

import orjson
import pytest
from django.db.backends.signals import connection_created
from django.db.backends.utils import CursorWrapper
from django.test import AsyncClient

from health.board import breakers
from routing import aliasfile
from tests.server import ROOT


@pytest.fixture
def gateway_settings(settings, fake):
    def cloud(name):
        return {"kind": "openai", "base_url": f"{fake.url}/{name}/v1", "api_key": f"test-{name}-key",
                "max_concurrent": None, "timeout": 10}

    settings.PROVIDERS = {
        "ollama": {"kind": "ollama", "base_url": fake.url, "api_key": None, "max_concurrent": None, "timeout": 10},
        "groq": cloud("groq"),
        "openrouter": cloud("openrouter"),
    }
    settings.MANA_LLM_API_KEYS = []
    settings.MANA_LLM_ADMIN_KEY = None
    settings.RETRIES = 0
    settings.BREAKER_FAILURE_THRESHOLD = 1000
    settings.STATE_POLL_INTERVAL = 3600  # park the poller: only the request path is measured
    return settings


@pytest.fixture
def aliases(transactional_db):
    aliasfile.sync(ROOT / "aliases.yaml")
    breakers.clear()
    yield
    breakers.clear()


class AllQueries:
    """Every SQL statement run in any thread, and every new connection, while active."""

    def __init__(self):
        self.queries = []
        self.new_connections = []

    def __enter__(self):
        original = CursorWrapper._execute_with_wrappers
        queries = self.queries

        def counting(cursor, sql, params, many, executor):
            queries.append((threading.current_thread().name, sql))
            return original(cursor, sql, params, many, executor)

        self._patch = mock.patch.object(CursorWrapper, "_execute_with_wrappers", counting)
        self._patch.start()
        connection_created.connect(self._created)
        return self

    def _created(self, sender, connection, **kwargs):
        self.new_connections.append((threading.current_thread().name, connection.alias))

    def __exit__(self, *exc):
        connection_created.disconnect(self._created)
        self._patch.stop()


def chat_body(**extra):
    return orjson.dumps({"model": "mana/fast-text", "messages": [{"role": "user", "content": "hi"}], **extra})


async def read_stream(response):
    return b"".join([part async for part in response.streaming_content])


@pytest.mark.django_db(transaction=True)
async def test_steady_state_requests_run_no_query(gateway_settings, aliases, fake):
    client = AsyncClient()
    # warm-up: loads aliases and breaker state (the queries happen here, once)
    with AllQueries() as warmup:
        response = await client.post("/v1/chat/completions", chat_body(), content_type="application/json")
        assert response.status_code == 200, response.content
    assert warmup.queries, "the warm-up should have loaded state from the database"

    with AllQueries() as measured:
        plain = await client.post("/v1/chat/completions", chat_body(), content_type="application/json")
        assert plain.status_code == 200, plain.content
        assert orjson.loads(plain.content)["model"] == "ollama/qwen2.5:7b"

        stream = await client.post("/v1/chat/completions", chat_body(stream=True), content_type="application/json")
        assert stream.status_code == 200
        body = await read_stream(stream)
        assert body.endswith(b"data: [DONE]\n\n") and b"\"model\":\"ollama/qwen2.5:7b\"" in body

        embeddings = await client.post("/v1/embeddings", orjson.dumps({"model": "ollama/nomic-embed-text",
                                                                       "input": "x"}),
                                       content_type="application/json")
        assert embeddings.status_code == 200

        models = await client.get("/v1/models/mana/fast-text")
        assert models.status_code == 200

    assert measured.queries == [], measured.queries
    assert measured.new_connections == []


@pytest.mark.django_db(transaction=True)
async def test_a_fallback_reads_no_database(gateway_settings, aliases, fake):
    """A failed entry changes breaker state; that is written in the background on the DB
    thread (a write, never a read on the request path) and the answer does not wait for it."""
    client = AsyncClient()
    assert (await client.post("/v1/chat/completions", chat_body(), content_type="application/json")).status_code == 200
    fake.fault("ollama", "qwen2.5:7b", status=500)
    with AllQueries() as measured:
        response = await client.post("/v1/chat/completions", chat_body(), content_type="application/json")
        assert response.status_code == 200
        assert response.headers["X-Mana-LLM-Attempts"] == "ollama/qwen2.5:7b=http_500"
        await breakers.flush()
    # only the breaker write, on the background DB thread, never a read and never in the loop's thread
    assert measured.queries, "the failure should have been persisted"
    for thread, sql in measured.queries:
        assert thread.startswith("manallm-db"), (thread, sql)
        assert sql.split()[0].upper() in ("UPDATE", "INSERT", "BEGIN", "COMMIT", "SAVEPOINT", "RELEASE"), sql


@pytest.mark.django_db(transaction=True)
async def test_request_log_all_reads_no_database_on_the_request_path(gateway_settings, aliases, fake):
    """REQUEST_LOG=all: every request is a row, held in memory on the request path; the
    rows reach the database only through the background DB thread's batch write."""
    from manallm.background import run_db
    from requestlog.buffer import request_log
    from requestlog.models import RequestLogEntry

    gateway_settings.REQUEST_LOG = "all"
    client = AsyncClient()
    assert (await client.post("/v1/chat/completions", chat_body(), content_type="application/json")).status_code == 200
    await run_db(request_log.flush)
    held = request_log.held()
    with AllQueries() as measured:
        for extra in ({}, {"stream": True}):
            response = await client.post("/v1/chat/completions", chat_body(**extra), content_type="application/json")
            assert response.status_code == 200
            if extra:
                await read_stream(response)
    assert measured.queries == [] and measured.new_connections == []
    assert request_log.held() == held + 2
    with AllQueries() as flushed:
        await run_db(request_log.flush)
    assert {thread.split("_")[0] for thread, _ in flushed.queries} == {"manallm-db"}
    assert await RequestLogEntry.objects.acount() >= 2

"""manallm.handler in process: the ASGI application called with a scope, receive and send.

The fork of Django's ``ASGIHandler.handle`` is guarded by a system check (a Django
upgrade that changes the forked method fails loudly) and exercised here directly: the
DB-free paths close inline, every other path keeps Django's connection housekeeping,
``request_finished`` is sent either way, and a client that goes away mid-stream cancels
the view. The path table it reads must cover every route.
"""
import asyncio
import threading

import pytest
from django.core import checks, signals
from django.http import JsonResponse, StreamingHttpResponse
from django.urls import URLResolver, get_resolver, path

from manallm import background, handler, paths

pytestmark = pytest.mark.urls("tests.test_handler")

seen = {}  # what the views below observed


async def plain(request):
    seen.update(db_free=handler._db_free.get(), started=seen.get("ensure_started", 0))
    return JsonResponse({"ok": True})


async def stream(request):
    async def events():
        try:
            yield b"first"
            await asyncio.Event().wait()  # a slow upstream: only a disconnect ends this
            yield b"never"
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise
        finally:
            seen["closed"] = True

    return StreamingHttpResponse(events(), content_type="text/event-stream")


urlpatterns = [path("v1/chat/plain", plain), path("v1/chat/stream", stream), path("plain", plain)]


@pytest.fixture
def app(settings, monkeypatch):
    """The gateway's handler as daphne gets it; Django's signal wiring restored afterwards."""
    settings.MANA_LLM_API_KEYS = []
    saved = {signal: list(signal.receivers) for signal in (signals.request_started, signals.request_finished)}
    owned = handler._owns_connection_housekeeping

    async def ensure_started():
        seen["ensure_started"] = seen.get("ensure_started", 0) + 1

    monkeypatch.setattr(background, "ensure_started", ensure_started)  # no database in these tests
    application = handler.get_asgi_application()  # (disconnects Django's close_old_connections)
    housekeeping = []
    monkeypatch.setattr(handler, "close_old_connections", lambda: housekeeping.append(threading.get_ident()))
    seen.clear()
    application.housekeeping = housekeeping
    application.finished = finished = []
    received = lambda **kwargs: finished.append(threading.get_ident())  # noqa: E731
    signals.request_finished.connect(received, weak=False)
    yield application
    for signal, receivers in saved.items():
        signal.receivers[:] = receivers
        signal.sender_receivers_cache.clear()
    handler._owns_connection_housekeeping = owned


def scope(path, method="GET"):
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}


async def call(application, path, disconnect_after=None):
    """Run one request; the client disconnects once ``disconnect_after`` was sent."""
    sent, body_seen = [], asyncio.Event()
    requests = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive():
        message = next(requests, None)
        if message is not None:
            return message
        if disconnect_after is None:
            await asyncio.Event().wait()  # the client stays connected
        await body_seen.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message.get("body") == disconnect_after:
            body_seen.set()

    await asyncio.wait_for(application(scope(path), receive, send), timeout=5)
    return sent


@pytest.mark.parametrize("path, db_free", [
    ("/v1/chat/completions", True), ("/v1/embeddings", True), ("/v1/models/mana/fast", True), ("/metrics", True),
    ("/v1/health", True), ("/health", True), ("/v1/health/ollama/reset", False), ("/v1/aliases", False),
    ("/admin/", False), ("/plain", False),
])
def test_the_path_table(path, db_free):
    assert paths.is_db_free(path) is db_free


def test_every_route_has_a_row_in_the_path_table():
    def prefixes(resolver, prefix=""):
        for pattern in resolver.url_patterns:
            route = prefix + str(pattern.pattern).lstrip("^")
            literal = "/" + next((route[:i] for i, c in enumerate(route) if c in "<([?.*+\\$"), route)
            if isinstance(pattern, URLResolver) and literal == "/":
                yield from prefixes(pattern, route)
            else:
                yield literal

    routes = set(prefixes(get_resolver("manallm.urls")))
    assert {"/admin/", "/metrics", "/v1/chat/completions", "/health"} <= routes
    assert [route for route in sorted(routes) if not route.startswith(tuple(p for p, *_ in paths.PATHS))] == []


def test_the_fork_matches_the_installed_django():
    assert handler.check_fork() == []
    assert handler.check_fork in checks.registry.registry.get_checks()


def test_the_fork_check_fails_loudly_when_django_moves(monkeypatch):
    monkeypatch.setattr(handler, "FORKED_FROM", ((5, 1), "0" * 64))
    errors = handler.check_fork()
    assert [error.id for error in errors] == ["manallm.E001", "manallm.E002"]
    assert all(isinstance(error, checks.Error) for error in errors)
    assert "5.1" in errors[0].msg and "FORKED_FROM" in errors[1].hint


async def test_a_db_free_request_closes_inline(app):
    sent = await call(app, "/v1/chat/plain")
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"ok": true}'
    assert seen == {"ensure_started": 1, "db_free": True, "started": 1}  # state first, then the view
    assert app.finished == [threading.get_ident()]  # request_finished sent in the loop's thread
    assert app.housekeeping == []  # no connection housekeeping, no hop


async def test_any_other_request_keeps_djangos_housekeeping(app):
    sent = await call(app, "/plain")
    assert sent[0]["status"] == 200
    assert seen["db_free"] is False and seen["started"] == 1
    assert len(app.finished) == 1 and app.finished[0] != threading.get_ident()  # closed on the sync thread
    assert len(app.housekeeping) == 2  # close_old_connections on request_started and request_finished


async def test_an_unknown_path_answers_404_and_finishes(app):
    sent = await call(app, "/nowhere")
    assert sent[0]["status"] == 404
    assert len(app.finished) == 1


async def test_a_disconnect_during_a_stream_cancels_the_view(app):
    sent = await call(app, "/v1/chat/stream", disconnect_after=b"first")
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"first"
    assert b"never" not in [message.get("body") for message in sent]
    assert seen.get("cancelled") and seen.get("closed")
    assert app.finished == [threading.get_ident()]  # request_finished still sent, inline


async def test_only_http_is_handled(app):
    with pytest.raises(ValueError, match="websocket"):
        await app({"type": "websocket"}, None, None)

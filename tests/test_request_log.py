"""The request log (README#request-log), on real gateway processes and real databases.

- REQUEST_LOG off / errors / all against a gateway started as `make run` starts it, with
  the fake upstream making one request succeed, one fall over and one fail. The poll is
  parked, so every row is written by the SIGTERM flush: rows before the stop would mean a
  write on some other path, a missing row after it a lost one.
- Rows carry consumer, requested model, target, attempts with reasons, status; the
  database file holds neither the prompt nor the client key.
- A PostgreSQL outage: the requests made during it are answered at once and their rows
  are written once the database is back.
- Pruning with an injected ``now``, by the command and by ``probe_providers``.
- The bounded buffer: the oldest row goes first, counted, warned about once.
- In the admin, in a real browser: a fallen-over request found by its request id, its
  attempts listed with their reasons.
"""
import datetime
import logging
import signal
import sqlite3
import time

import httpx
import psycopg
import pytest

from manallm.exchange import Exchange
from requestlog.buffer import RequestLog, worth_a_row
from tests.helpers import chat, wait_for
from tests.server import Server, gateway_server, provider_env

KEY = "client-key-for-the-log-test"
PROMPT = "a confidential prompt about the merger"
ENV = {"RETRIES": "0", "MANA_LLM_API_KEY": KEY, "BREAKER_FAILURE_THRESHOLD": "100"}
TABLE = "requestlog_requestlogentry"
UNAVAILABLE = "request log: the database is unavailable"
COLUMNS = "request_id, consumer, requested, target, attempts, status, error_type, first_token_ms, latency_ms"


class Launched(Server):
    """A gateway started as `make run` starts it (manallm.serve: a SIGTERM drains and flushes)."""

    def start(self):
        return self.launch()

    def stop_gracefully(self):
        self.signal(signal.SIGTERM)
        assert self.process.wait(30) == 0, self.logs()


@pytest.fixture
def launch(tmp_path, fake_upstream):
    started = []

    def start(database=None, **env):
        server = Launched(tmp_path / f"gw{len(started)}", {**provider_env(fake_upstream.url), **ENV, **env}, database)
        started.append(server.prepare().start())
        return server

    yield start
    for server in started:
        server.stop()


def send(server, model, request_id, **extra):
    return httpx.post(f"{server.url}/v1/chat/completions", json=chat(model, PROMPT, **extra), timeout=20,
                      headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": request_id})


def three_requests(server, fake, prefix=""):
    """One request that succeeds, one that falls over (ollama/gemma3:12b answers 500, groq
    serves), one that fails (its only entry answers 500); -> the answers."""
    fake.fault("ollama", "gemma3:12b", status=500)
    fake.fault("groq", "broken-model", status=500)
    ok = send(server, "ollama/qwen2.5:7b", f"{prefix}ok", stream=True)
    fell = send(server, "mana/long-form", f"{prefix}fell")
    failed = send(server, "groq/broken-model", f"{prefix}failed")
    assert (ok.status_code, fell.status_code, failed.status_code) == (200, 200, 503), failed.text
    assert fell.headers["X-Mana-LLM-Attempts"] == "ollama/gemma3:12b=http_500"
    return ok, fell, failed


def sqlite_rows(server):
    path = server.database.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return {row["request_id"]: dict(row) for row in db.execute(f"SELECT {COLUMNS} FROM {TABLE}")}


def postgres_rows(url):
    with psycopg.connect(url, connect_timeout=2) as db:
        return {row[0] for row in db.execute(f"SELECT request_id FROM {TABLE}")}


@pytest.mark.parametrize("mode", ["off", "errors", "all"])
def test_modes_and_the_flush_on_sigterm(launch, fake, mode):
    server = launch(REQUEST_LOG=mode, STATE_POLL_INTERVAL="3600")  # the poll never flushes here
    three_requests(server, fake)
    assert sqlite_rows(server) == {}  # held in memory, not written on the request path
    server.stop_gracefully()
    rows = sqlite_rows(server)

    expected = {"off": set(), "errors": {"fell", "failed"}, "all": {"ok", "fell", "failed"}}[mode]
    assert set(rows) == expected
    if mode == "off":
        return
    fell, failed = rows["fell"], rows["failed"]
    assert (fell["consumer"], fell["requested"], fell["target"], fell["status"]) == \
        ("env", "mana/long-form", "groq/llama-3.3-70b-versatile", 200)
    assert fell["attempts"] == '[{"model": "ollama/gemma3:12b", "reason": "http_500"}]'
    assert (failed["requested"], failed["target"], failed["status"], failed["error_type"]) == \
        ("groq/broken-model", "", 503, "no_healthy_provider")
    assert failed["attempts"] == '[{"model": "groq/broken-model", "reason": "http_500"}]'
    if mode == "all":
        ok = rows["ok"]
        assert (ok["target"], ok["status"], ok["attempts"]) == ("ollama/qwen2.5:7b", 200, "[]")
        assert ok["first_token_ms"] is not None and ok["latency_ms"] >= ok["first_token_ms"]
    # Never the content, never the key: not in any column, not anywhere in the file.
    raw = (server.workdir / "db.sqlite3").read_bytes()
    assert PROMPT.encode() not in raw and KEY.encode() not in raw


def test_rows_held_through_a_postgres_outage(launch, postgres, postgres_url, fake):
    server = launch(database=postgres_url, STATE_POLL_INTERVAL="0.25")
    three_requests(server, fake, "before-")
    assert wait_for(lambda: postgres_rows(postgres_url) == {"before-fell", "before-failed"}, timeout=5)

    postgres.stop()
    try:
        started = time.monotonic()
        three_requests(server, fake, "during-")  # answered from memory, at once
        assert time.monotonic() - started < 3
        # A write of the held rows failed (and they were kept for the next tick).
        assert wait_for(lambda: UNAVAILABLE in server.logs(), timeout=5), server.logs()
    finally:
        postgres.start()
    expected = {"before-fell", "before-failed", "during-fell", "during-failed"}
    assert wait_for(lambda: postgres_rows(postgres_url) == expected, timeout=10), server.logs()
    assert server.logs().count(UNAVAILABLE) == 1  # once per outage, not per tick


# --- retention ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune_keeps_the_last_days(settings):
    from requestlog.models import RequestLogEntry

    now = datetime.datetime(2026, 3, 10, 12, tzinfo=datetime.timezone.utc)
    for request_id, age in (("old", 8), ("edge", 7.01), ("recent", 6.99), ("new", 0)):
        RequestLogEntry.objects.create(time=now - datetime.timedelta(days=age), request_id=request_id,
                                       consumer="env", kind="chat", status=503, latency_ms=1)
    settings.REQUEST_LOG_DAYS = 7
    assert RequestLogEntry.objects.prune(now=now) == 2
    assert set(RequestLogEntry.objects.values_list("request_id", flat=True)) == {"recent", "new"}
    assert RequestLogEntry.objects.prune(days=1, now=now) == 1
    assert list(RequestLogEntry.objects.values_list("request_id", flat=True)) == ["new"]


def insert_aged(path, ages_in_days):
    now = datetime.datetime.now(datetime.timezone.utc)
    with sqlite3.connect(path) as db:
        for request_id, age in ages_in_days.items():
            moment = (now - datetime.timedelta(days=age)).strftime("%Y-%m-%d %H:%M:%S")
            db.execute(f"INSERT INTO {TABLE} (time, request_id, consumer, kind, streaming, requested, target, "
                       "attempts, status, error_type, latency_ms, prompt_tokens, completion_tokens, cache, limited) "
                       "VALUES (?, ?, 'env', 'chat', 0, '', '', '[]', 503, '', 1, 0, 0, '', '')",
                       (moment, request_id))


@pytest.mark.parametrize("command", [["prune_request_log"], ["probe_providers", "--once", "--timeout", "2"]])
def test_the_commands_prune(tmp_path, fake_upstream, command):
    server = gateway_server(tmp_path, fake_upstream.url, {"REQUEST_LOG_DAYS": "3"}).prepare()
    path = server.database.removeprefix("sqlite:///")
    insert_aged(path, {"old": 4, "kept": 2})
    server.manage(*command)
    assert set(sqlite_rows(server)) == {"kept"}


# --- the buffer ----------------------------------------------------------------------------


def finished(**fields):
    exchange = Exchange("req", "env", "chat", requested="mana/fast-text")
    for name, value in fields.items():
        setattr(exchange, name, value)
    return exchange


def test_which_requests_errors_mode_keeps():
    assert not worth_a_row(finished(target="ollama/qwen2.5:7b"), "errors")
    assert worth_a_row(finished(status=404, error_type="model_not_found"), "errors")
    assert worth_a_row(finished(error_type="upstream_error"), "errors")  # a stream that ended with an error
    assert worth_a_row(finished(attempts=[{"model": "ollama/x", "reason": "saturated"}]), "errors")
    assert worth_a_row(finished(limited="rpm", status=429), "errors")
    assert worth_a_row(finished(), "all") and not worth_a_row(finished(status=500), "off")


def test_a_full_buffer_drops_the_oldest_and_warns_once(settings, caplog):
    settings.REQUEST_LOG = "all"
    log = RequestLog(capacity=3)
    with caplog.at_level(logging.WARNING, "manallm.requestlog"):
        for n in range(5):
            log.record(finished(request_id=f"r{n}"))
    assert log.dropped == 2 and log.held() == 3
    assert [row[1] for row in log._buffer] == ["r2", "r3", "r4"]
    assert len([r for r in caplog.records if "buffer full" in r.message]) == 1


# --- the admin, in a real browser ------------------------------------------------------------


def test_admin_finds_a_fallen_over_request_by_its_id(chromium, make_server, fake, tmp_path):
    server = make_server(env={**ENV, "STATE_POLL_INTERVAL": "0.1"})
    server.manage("shell", "-c", "from django.contrib.auth.models import User; "
                                 "User.objects.create_superuser('root', 'root@example.com', 'pw-for-the-test')")
    three_requests(server, fake, "browser-")
    assert wait_for(lambda: "browser-fell" in sqlite_rows(server), timeout=5)

    page = chromium.new_page()
    try:
        page.goto(f"{server.url}/admin/login/?next=/admin/requestlog/requestlogentry/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "pw-for-the-test")
        page.click("input[type=submit]")
        page.wait_for_selector("#changelist")
        page.fill("#searchbar", "browser-fell")
        page.press("#searchbar", "Enter")
        page.wait_for_selector("#result_list")
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        assert "mana/long-form" in rows.first.inner_text()
        page.screenshot(path=str(tmp_path / "request-log-search.png"), full_page=True)

        rows.first.locator("th a").click()
        page.wait_for_selector("table.request-attempts")
        attempts = page.locator("table.request-attempts tbody tr")
        assert attempts.count() == 1
        assert attempts.first.inner_text().split("\t") == ["1", "ollama/gemma3:12b", "http_500"]
        assert "groq/llama-3.3-70b-versatile" in page.inner_text("#content")
        page.screenshot(path=str(tmp_path / "request-log-detail.png"), full_page=True)
    finally:
        page.close()

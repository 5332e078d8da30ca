"""health.board.BreakerBoard: the in-memory board, its listeners and its persistence."""
import logging

import pytest

from health import rows as rows_module
from health.breaker import Breaker
from health.models import Breaker as Row
from health.board import BreakerBoard, Transition
from manallm.background import run_db
from tests.helpers import T0, FakeClock


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture(autouse=True)
def breaker_settings(settings):
    settings.BREAKER_FAILURE_THRESHOLD = 2
    settings.BREAKER_BACKOFF_SECONDS = 60
    return settings


@pytest.fixture
def board(clock):
    board = BreakerBoard(clock=clock)
    board.seen = []
    board.add_listener(board.seen.append)
    return board


def statuses(board):
    return [(t.key, t.old_status, t.new_status) for t in board.seen]


# --- transitions (sync context: writes go straight to the database) -------------------


@pytest.mark.django_db
def test_provider_level_cycle(board, clock):
    board.record_failure("ollama", "qwen2.5:7b", "provider", "connect_error: refused")
    assert board.status("ollama") == "healthy"  # first failure stays healthy
    assert board.claim("ollama", "qwen2.5:7b") is None

    clock.advance(1)
    board.record_failure("ollama", "gemma3:12b", "provider", "connect_error: refused")
    assert board.status("ollama") == "unhealthy"
    # a provider breaker skips every model of the provider
    assert board.claim("ollama", "qwen2.5:7b") == "cache-unhealthy"
    assert board.claim("ollama", "llava:7b") == "cache-unhealthy"
    assert board.claim("groq", "llama-3.1-8b-instant") is None
    assert board.get("ollama", "qwen2.5:7b") is None  # no deployment state was created

    clock.advance(59.9)
    assert board.claim("ollama", "qwen2.5:7b") == "cache-unhealthy"
    clock.advance(0.1)  # backoff over: half-open lets the next call through
    assert board.status("ollama") == "half_open"
    assert board.claim("ollama", "qwen2.5:7b") is None

    board.record_failure("ollama", "qwen2.5:7b", "provider", "connect_error: refused again")
    assert board.status("ollama") == "unhealthy"  # re-opened for a full window
    assert board.get("ollama").unhealthy_until == clock.now + 60
    clock.advance(60)
    assert board.status("ollama") == "half_open"

    board.record_success("ollama", "qwen2.5:7b")
    assert board.status("ollama") == "healthy"
    assert board.get("ollama").consecutive_failures == 0
    assert statuses(board) == [
        ("ollama", "healthy", "unhealthy"),
        ("ollama", "half_open", "unhealthy"),
        ("ollama", "half_open", "healthy"),
    ]
    row = Row.objects.get(key="ollama")
    assert (row.consecutive_failures, row.unhealthy_until, row.last_error) == (0, None, "connect_error: refused again")


@pytest.mark.django_db
def test_deployment_level_cycle(board, clock):
    model = "anthropic/claude-3-haiku"
    board.record_failure("openrouter", model, "deployment", "http_503: overloaded")
    assert board.status("openrouter", model) == "healthy"
    board.record_failure("openrouter", model, "deployment", "http_503: overloaded")
    assert board.status("openrouter", model) == "unhealthy"
    assert board.claim("openrouter", model) == "cache-unhealthy"
    # one overloaded model does not take down the provider's other models
    assert board.claim("openrouter", "openai/gpt-4o-mini") is None
    assert board.status("openrouter") == "healthy"
    assert board.get("openrouter") is None

    clock.advance(60)
    assert board.status("openrouter", model) == "half_open"
    assert board.claim("openrouter", model) is None
    board.record_failure("openrouter", model, "deployment", "first_token_timeout")
    assert board.status("openrouter", model) == "unhealthy"
    assert board.get("openrouter", model).unhealthy_until == clock.now + 60
    clock.advance(60)
    board.record_success("openrouter", model)
    assert board.status("openrouter", model) == "healthy"
    assert statuses(board) == [
        ("openrouter/anthropic/claude-3-haiku", "healthy", "unhealthy"),
        ("openrouter/anthropic/claude-3-haiku", "half_open", "unhealthy"),
        ("openrouter/anthropic/claude-3-haiku", "half_open", "healthy"),
    ]
    assert Row.objects.get(key="openrouter/anthropic/claude-3-haiku").model == model


@pytest.mark.django_db
def test_success_on_deployment_closes_provider(board, clock):
    board.record_failure("ollama", "", "provider", "connect_error")
    board.record_failure("ollama", "", "provider", "connect_error")
    board.record_failure("ollama", "qwen2.5:7b", "deployment", "http_500")
    assert board.status("ollama") == "unhealthy"
    clock.advance(61)  # half-open: a call goes through and succeeds
    board.record_success("ollama", "qwen2.5:7b")
    assert board.status("ollama") == "healthy"
    assert board.get("ollama", "qwen2.5:7b").consecutive_failures == 0
    assert Row.objects.get(key="ollama").unhealthy_until is None


@pytest.mark.django_db
def test_success_with_empty_model_touches_provider_only(board):
    board.record_failure("ollama", "qwen2.5:7b", "deployment", "http_500")
    board.record_failure("ollama", "", "provider", "connect_error")
    board.record_success("ollama", "")
    assert board.get("ollama").consecutive_failures == 0
    assert board.get("ollama", "qwen2.5:7b").consecutive_failures == 1


@pytest.mark.django_db
def test_thresholds_are_read_at_call_time(board, clock, breaker_settings):
    breaker_settings.BREAKER_FAILURE_THRESHOLD = 3
    breaker_settings.BREAKER_BACKOFF_SECONDS = 5
    for _ in range(2):
        board.record_failure("groq", "m", "deployment", "rate_limit")
    assert board.status("groq", "m") == "healthy"
    board.record_failure("groq", "m", "deployment", "rate_limit")
    assert board.status("groq", "m") == "unhealthy"
    clock.advance(5)
    assert board.status("groq", "m") == "half_open"


@pytest.mark.django_db
def test_level_none_counts_against_nothing(board, django_assert_num_queries):
    with django_assert_num_queries(0):
        board.record_failure("ollama", "m", None, "context_length_exceeded")
    assert board.get("ollama") is None and board.get("ollama", "m") is None


# --- writes only on a change --------------------------------------------------------


@pytest.mark.django_db
def test_no_write_on_noop_success(board, django_assert_num_queries):
    with django_assert_num_queries(0):
        board.record_success("ollama", "qwen2.5:7b")  # no state at all
    board.record_failure("ollama", "qwen2.5:7b", "deployment", "http_500")
    board.record_success("ollama", "qwen2.5:7b")  # a real change: written
    assert Row.objects.get(key="ollama/qwen2.5:7b").consecutive_failures == 0
    with django_assert_num_queries(0):
        board.record_success("ollama", "qwen2.5:7b")  # closed with 0 failures: nothing to write
        board.record_success("ollama", "qwen2.5:7b")
    assert not board.seen


@pytest.mark.django_db(transaction=True)
async def test_no_background_write_on_noop_success(board, monkeypatch):
    writes = []
    monkeypatch.setattr(rows_module, "write_row", lambda s: writes.append(s.key))
    for _ in range(100):
        board.record_success("ollama", "qwen2.5:7b")
    assert not board._pending
    board.record_failure("ollama", "qwen2.5:7b", "deployment", "http_500")
    assert len(board._pending) == 1  # scheduled, not awaited: the request does not wait
    await board.flush()
    board.record_success("ollama", "qwen2.5:7b")
    board.record_success("ollama", "qwen2.5:7b")
    await board.flush()
    assert writes == ["ollama/qwen2.5:7b", "ollama/qwen2.5:7b"] and not board._pending


# --- listeners -----------------------------------------------------------------------


@pytest.mark.django_db
def test_raising_listener_breaks_nothing(board, caplog):
    def broken(transition):
        raise RuntimeError("listener bug")

    board.add_listener(broken)
    seen_after = []
    board.add_listener(seen_after.append)
    with caplog.at_level(logging.ERROR, logger="manallm.health"):
        board.record_failure("ollama", "", "provider", "connect_error")
        board.record_failure("ollama", "", "provider", "connect_error")
    assert board.status("ollama") == "unhealthy"
    assert [t.new_status for t in seen_after] == ["unhealthy"]
    assert "listener" in caplog.text and "listener bug" in caplog.text
    board.remove_listener(broken)
    board.remove_listener(broken)  # removing twice is harmless


@pytest.mark.django_db
def test_transition_payload_and_log_line(board, clock, caplog):
    with caplog.at_level(logging.INFO, logger="manallm.health"):
        board.record_failure("ollama", "", "provider", "connect_error: refused")
        board.record_failure("ollama", "", "provider", "connect_error: refused")
        clock.advance(61)
        board.record_success("ollama", "m")
    opened, closed = board.seen
    assert opened == Transition("ollama", "ollama", "", "healthy", "unhealthy", "connect_error: refused",
                                T0 + 60, "local")
    assert (closed.old_status, closed.new_status, closed.error) == ("half_open", "healthy", None)
    lines = [r.getMessage() for r in caplog.records if r.name == "manallm.health"]
    assert len(lines) == 2
    assert lines[0].startswith("breaker ollama: healthy -> unhealthy") and "connect_error: refused" in lines[0]
    assert lines[1] == "breaker ollama: half_open -> healthy"


# --- reads ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_after(board, clock):
    assert board.retry_after([("ollama", "a")]) is None
    board.record_failure("ollama", "a", "deployment", "x")
    board.record_failure("ollama", "a", "deployment", "x")  # a: open until T0+60
    clock.advance(10)
    board.record_failure("groq", "", "provider", "x")
    board.record_failure("groq", "", "provider", "x")  # groq: open until T0+70
    assert board.retry_after([("ollama", "a"), ("groq", "b")]) == pytest.approx(50)
    assert board.retry_after([("groq", "b")]) == pytest.approx(60)
    # an entry held by both breakers opens when the later one does
    board.record_failure("groq", "b", "deployment", "x")
    clock.advance(5)
    board.record_failure("groq", "b", "deployment", "x")  # groq/b: open until T0+75
    assert board.retry_after([("groq", "b")]) == pytest.approx(60)
    clock.advance(100)
    assert board.retry_after([("ollama", "a"), ("groq", "b")]) is None  # all half-open now


@pytest.mark.django_db
def test_snapshot(board, clock):
    board.record_failure("openrouter", "anthropic/claude-3-haiku", "deployment", "http_503")
    board.record_failure("openrouter", "anthropic/claude-3-haiku", "deployment", "http_503")
    board.record_failure("ollama", "", "provider", "connect_error")
    snapshot = board.snapshot()
    assert snapshot == {
        "ollama": {"status": "healthy", "consecutive_failures": 1, "last_error": "connect_error",
                   "last_check_unix": T0, "unhealthy_until_unix": None, "models": {}},
        "openrouter": {
            "status": "healthy", "consecutive_failures": 0, "last_error": None, "last_check_unix": None,
            "unhealthy_until_unix": None,
            "models": {"anthropic/claude-3-haiku": {
                "status": "unhealthy", "consecutive_failures": 2, "last_error": "http_503",
                "last_check_unix": T0, "unhealthy_until_unix": T0 + 60}},
        },
    }
    assert board.entry("groq")["status"] == "healthy" and board.entry("groq")["models"] == {}
    assert str(board) == "breakers"


# --- reset ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_reset_closes_provider_and_deployments(board, clock):
    for _ in range(2):
        board.record_failure("openrouter", "", "provider", "connect_error")
        board.record_failure("openrouter", "a/b", "deployment", "http_503")
        board.record_failure("groq", "c", "deployment", "http_503")
    # a deployment opened by another process that this one has not polled yet
    Row.objects.create(key="openrouter/x/y", provider="openrouter", model="x/y", consecutive_failures=5,
                       unhealthy_until=T0 + 60, updated_at=T0)
    clock.advance(1)
    board.reset("openrouter")
    assert board.status("openrouter") == board.status("openrouter", "a/b") == "healthy"
    assert board.status("groq", "c") == "unhealthy"  # other providers untouched
    rows = {r.key: r for r in Row.objects.all()}
    for key in ("openrouter", "openrouter/a/b", "openrouter/x/y"):
        assert (rows[key].consecutive_failures, rows[key].unhealthy_until, rows[key].updated_at) == (0, None, T0 + 1)
    assert rows["groq/c"].unhealthy_until is not None
    board.poll()
    assert board.status("openrouter", "x/y") == "healthy"


@pytest.mark.django_db
def test_reset_keys(board):
    for _ in range(2):
        board.record_failure("openrouter", "", "provider", "connect_error")
        board.record_failure("openrouter", "a/b", "deployment", "http_503")
    board.reset_keys(["openrouter/a/b"])
    assert board.status("openrouter", "a/b") == "healthy"
    assert board.status("openrouter") == "unhealthy"
    assert Row.objects.get(key="openrouter/a/b").unhealthy_until is None


# --- merging what other processes wrote ------------------------------------------------


@pytest.mark.django_db
def test_poll_merges_newer_rows_only(board, clock):
    board.record_failure("ollama", "", "provider", "local failure")  # updated_at T0, written
    # another process wrote a newer state: it wins
    Row.objects.filter(key="ollama").update(consecutive_failures=2, unhealthy_until=T0 + 65, updated_at=T0 + 5,
                                            last_error="other worker")
    Row.objects.create(key="groq", provider="groq", consecutive_failures=1, updated_at=T0 - 100)
    board.poll()
    assert board.status("ollama") == "unhealthy" and board.get("ollama").last_error == "other worker"
    assert board.get("groq").consecutive_failures == 1
    assert board.seen[-1] == Transition("ollama", "ollama", "", "healthy", "unhealthy", "other worker", T0 + 65, "db")

    # a local change newer than the row (its write still pending) is not reverted
    clock.advance(10)
    board._breakers["ollama"], _ = board.get("ollama").record_success(clock())
    board.poll()
    assert board.status("ollama") == "healthy"
    # an older row never replaces the local copy
    Row.objects.filter(key="ollama").update(updated_at=T0 + 9)
    board.poll()
    assert board.status("ollama") == "healthy"
    n = len(board.seen)
    board.poll()
    assert len(board.seen) == n  # an unchanged database fires nothing


@pytest.mark.django_db
def test_stale_write_never_overwrites_a_newer_row(board):
    Row.objects.create(key="ollama", provider="ollama", consecutive_failures=7, updated_at=T0 + 100)
    assert rows_module.write_row(Breaker("ollama", "ollama", consecutive_failures=1, updated_at=T0)) is False
    assert Row.objects.get(key="ollama").consecutive_failures == 7
    assert rows_module.write_row(Breaker("ollama", "ollama", consecutive_failures=2, updated_at=T0 + 101))
    assert Row.objects.get(key="ollama").consecutive_failures == 2


# --- persistence through the background DB thread ----------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_second_process_sees_the_breaker_state(clock):
    a = BreakerBoard(clock=clock)
    a.record_failure("openrouter", "anthropic/claude-3-haiku", "deployment", "http_503")
    a.record_failure("openrouter", "anthropic/claude-3-haiku", "deployment", "http_503")
    a.record_failure("ollama", "", "provider", "connect_error")
    await a.flush()

    b = BreakerBoard(clock=clock)  # a fresh process
    seen = []
    b.add_listener(seen.append)
    await run_db(b.load)
    assert b.claim("openrouter", "anthropic/claude-3-haiku") == "cache-unhealthy"
    assert b.get("ollama").consecutive_failures == 1
    assert b.snapshot() == a.snapshot()
    assert [(t.key, t.new_status, t.source) for t in seen] == [
        ("openrouter/anthropic/claude-3-haiku", "unhealthy", "db")]

    # b's later change reaches a through a poll
    clock.advance(61)
    b.record_success("openrouter", "anthropic/claude-3-haiku")
    await b.flush()
    await run_db(a.poll)
    assert a.status("openrouter", "anthropic/claude-3-haiku") == "healthy"


@pytest.mark.django_db(transaction=True)
async def test_database_outage_holds_transitions_and_refuses_resets(clock, monkeypatch, caplog):
    write_row = rows_module.write_row

    def broken(*args):
        raise RuntimeError("database is down")

    monkeypatch.setattr(rows_module, "write_row", broken)
    monkeypatch.setattr(rows_module, "reset_rows", broken)
    board = BreakerBoard(clock=clock)
    with caplog.at_level(logging.WARNING, logger="manallm.health"):
        # what the request path sees is applied in memory at once, never raises
        board.record_failure("ollama", "", "provider", "connect_error")
        board.record_failure("ollama", "", "provider", "connect_error")
        await board.flush()
        # an operator reset is refused whole: nothing changes in memory
        with pytest.raises(RuntimeError):
            board.reset("ollama")
    assert board.status("ollama") == "unhealthy"
    assert "database is down" in caplog.text
    with pytest.raises(RuntimeError):
        await run_db(board.poll)  # still down: the held write stays held

    monkeypatch.setattr(rows_module, "write_row", write_row)  # the database is back
    await run_db(board.poll)
    row = await Row.objects.aget(key="ollama")
    assert (row.consecutive_failures, row.unhealthy_until) == (2, T0 + 60)


def test_sync_write_error_is_logged(clock, monkeypatch, caplog):
    monkeypatch.setattr(rows_module, "write_row", lambda s: 1 / 0)
    board = BreakerBoard(clock=clock)
    with caplog.at_level(logging.WARNING, logger="manallm.health"):
        board.record_failure("ollama", "", "provider", "connect_error")
    assert board.get("ollama").consecutive_failures == 1
    assert "could not persist" in caplog.text


def test_secrets_never_reach_last_error(board, settings, monkeypatch):
    monkeypatch.setattr(rows_module, "write_row", lambda s: None)
    settings.PROVIDERS = {**settings.PROVIDERS, "groq": {"kind": "openai", "api_key": "gsk-live-secret-value"}}
    board.record_failure("groq", "m", "deployment", "401 for key gsk-live-secret-value")
    assert "gsk-live-secret-value" not in board.get("groq", "m").last_error


def test_half_open_lets_one_trial_call_through(board, clock, settings):
    settings.FIRST_TOKEN_TIMEOUT = 30
    for _ in range(2):
        board.record_failure("groq", "m", "deployment", "http_500")
    clock.advance(61)
    assert board.status("groq", "m") == "half_open"
    assert board.claim("groq", "m") is None  # the trial
    assert board.claim("groq", "m") == "cache-unhealthy"  # everyone else waits for its result
    assert board.claim("groq", "other") is None  # other deployments are not held
    board.record_failure("groq", "m", "deployment", "http_500")  # the trial failed: open for a full window
    assert board.claim("groq", "m") == "cache-unhealthy"
    clock.advance(61)
    assert board.claim("groq", "m") is None  # the next trial
    board.record_success("groq", "m")
    assert board.status("groq", "m") == "healthy"
    assert board.claim("groq", "m") is None and board.claim("groq", "m") is None


def test_a_trial_that_never_reports_gives_way_after_its_lease(board, clock, settings):
    settings.FIRST_TOKEN_TIMEOUT = 30
    for _ in range(2):
        board.record_failure("groq", "m", "deployment", "http_500")
    clock.advance(61)
    assert board.claim("groq", "m") is None  # a trial whose client went away
    clock.advance(29)
    assert board.claim("groq", "m") == "cache-unhealthy"
    clock.advance(2)
    assert board.claim("groq", "m") is None  # the lease ran out: a new trial


def test_an_answer_that_counts_against_no_breaker_still_ends_the_trial(board, clock):
    for _ in range(2):
        board.record_failure("groq", "m", "deployment", "http_500")
    clock.advance(61)
    assert board.claim("groq", "m") is None
    board.record_failure("groq", "m", None, "context_length_exceeded")
    assert board.claim("groq", "m") is None

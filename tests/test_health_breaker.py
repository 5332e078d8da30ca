"""health.breaker: the pure breaker state machine (docs/architecture.md#routing), with an injected clock."""
import pytest

from health.breaker import HALF_OPEN, HEALTHY, UNHEALTHY, Breaker, breaker_key, clean_error
from tests.helpers import T0

THRESHOLD, BACKOFF = 2, 60.0


def fail(b, now, text="connect_error: refused"):
    return b.record_failure(now, text, THRESHOLD, BACKOFF)


@pytest.mark.parametrize("provider,model,key", [
    ("ollama", "", "ollama"),
    ("openrouter", "anthropic/claude-3-haiku", "openrouter/anthropic/claude-3-haiku"),
])
def test_keys_and_levels(provider, model, key):
    b = Breaker.new(provider, model)
    assert b.key == breaker_key(provider, model) == key
    assert b.level == ("deployment" if model else "provider")
    assert b.status(T0) == HEALTHY and b.allows(T0)


@pytest.mark.parametrize("model", ["", "qwen2.5:7b"])
def test_full_cycle(model):
    b = Breaker.new("ollama", model)

    b, changed = fail(b, T0)  # first failure: still closed
    assert changed and b.status(T0) == HEALTHY and b.consecutive_failures == 1
    assert b.unhealthy_until is None and b.last_check == T0 and b.updated_at == T0
    assert b.last_error == "connect_error: refused"

    b, changed = fail(b, T0 + 1)  # threshold: opens for the backoff window
    assert changed and b.status(T0 + 1) == UNHEALTHY and not b.allows(T0 + 1)
    assert b.unhealthy_until == T0 + 1 + BACKOFF and b.consecutive_failures == 2
    assert b.status(T0 + 60.9) == UNHEALTHY

    assert b.status(T0 + 61) == HALF_OPEN and b.allows(T0 + 61)  # window over: half-open

    b, changed = fail(b, T0 + 70, "http_503")  # failure in half-open: a full new window
    assert changed and b.status(T0 + 70) == UNHEALTHY
    assert b.unhealthy_until == T0 + 70 + BACKOFF and b.consecutive_failures == 3
    assert b.last_error == "http_503"

    b, changed = b.record_success(T0 + 200)  # success in half-open: closed, count reset
    assert changed and b.status(T0 + 200) == HEALTHY
    assert b.consecutive_failures == 0 and b.unhealthy_until is None and b.updated_at == T0 + 200
    assert b.last_error == "http_503"  # kept as history


def test_success_below_threshold_resets_the_count():
    b, _ = fail(Breaker.new("groq"), T0)
    b, changed = b.record_success(T0 + 1)
    assert changed and b.consecutive_failures == 0
    b, _ = fail(b, T0 + 2)
    assert b.status(T0 + 2) == HEALTHY  # counts consecutive failures only


def test_success_on_pristine_breaker_is_no_change():
    b = Breaker.new("ollama")
    same, changed = b.record_success(T0)
    assert not changed and same is b


def test_touch_always_changes():
    b, changed = Breaker.new("ollama").touch(T0)
    assert changed and b.last_check == T0 and b.status(T0) == HEALTHY


def test_threshold_one_and_values_are_immutable():
    b = Breaker.new("ollama")
    opened, _ = b.record_failure(T0, "x", 1, 5)
    assert opened.status(T0) == UNHEALTHY and opened.unhealthy_until == T0 + 5
    assert b.consecutive_failures == 0 and b.unhealthy_until is None  # original untouched
    with pytest.raises(Exception):
        b.consecutive_failures = 3


def test_failure_while_open_extends_the_window():
    b, _ = fail(fail(Breaker.new("ollama"), T0)[0], T0)
    b, changed = fail(b, T0 + 10)
    assert changed and b.unhealthy_until == T0 + 10 + BACKOFF


def test_as_dict():
    b, _ = fail(fail(Breaker.new("ollama"), T0)[0], T0)
    assert b.as_dict(T0) == {
        "status": "unhealthy", "consecutive_failures": 2, "last_error": "connect_error: refused",
        "last_check_unix": T0, "unhealthy_until_unix": T0 + BACKOFF,
    }
    assert Breaker.new("x").as_dict(T0)["last_error"] is None


def test_clean_error_removes_secrets_and_truncates():
    assert "sk-abcdef" not in clean_error("Authorization: Bearer sk-abcdefghijklmnop1234 rejected")
    assert clean_error("GET /models?api_key=hunter2hunter2 failed") == "GET /models?api_key=*** failed"
    assert "topsecretvalue" not in clean_error("key topsecretvalue leaked", secrets=["topsecretvalue"])
    assert clean_error("GET /v1beta/models?key=abc123def (400)") == "GET /v1beta/models?key=*** (400)"
    assert clean_error("monkey=banana") == "monkey=banana"
    assert "AIza" not in clean_error("google said no to AIzaSyA1234567890abcdefghij")
    assert len(clean_error("x" * 1000)) == 300
    assert clean_error("line one\nline two") == "line one line two"
    assert clean_error(TimeoutError()) == "TimeoutError"

    class Err(Exception):
        reason = "connect_error"
        message = "refused"
    assert clean_error(Err()) == "connect_error: refused"

"""routing.router.Router (README#model-names, README#endpoints headers and errors, docs/architecture.md#routing).

Real adapters talk to the in-repo fake upstream over loopback; time is injected: the
router's retry waits go to a recording fake ``sleep``, jitter is fixed at 1.0 and the
breakers read a fake clock. Only FIRST_TOKEN_TIMEOUT / STREAM_IDLE_TIMEOUT are real
(and small) timeouts. Breaker persistence is stubbed (in-memory board only).
"""
import asyncio
import time

import pytest

from health.board import BreakerBoard
from manallm.errors import ModelNotFound
from providers import errors
from providers.base import Provider, has_content
from providers.ollama import OllamaProvider
from providers.openai_compat import OpenAICompatProvider
from routing.table import AliasTable, AliasView, Entry, Snapshot
from routing.router import NoHealthyProvider, Router
from tests.helpers import FakeClock, chat, collect, eventually, text_of, unused_port

OLLAMA, GROQ = Entry("ollama", "m1"), Entry("groq", "m2")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
LONG_TEXT = " ".join(f"word{i}" for i in range(40))


# --- harness ----------------------------------------------------------------------------


class MemoryBoard(BreakerBoard):
    """A BreakerBoard whose database writes are recorded, never run."""

    def __init__(self, clock):
        super().__init__(clock=clock, log_transitions=False)
        self.writes = []

    def _schedule(self, fn, *args):
        self.writes.append((fn.__name__, args))


class Providers:
    def __init__(self, adapters):
        self.adapters = adapters

    def get(self, name):
        return self.adapters.get(name)


class Exploding(Provider):
    """A provider with a bug: any call raises an exception outside the taxonomy."""

    calls = 0

    async def chat(self, model, body):
        self.calls += 1
        raise RuntimeError("adapter bug")

    async def chat_stream(self, model, body):
        self.calls += 1
        raise RuntimeError("adapter bug")
        yield  # pragma: no cover

    async def embed(self, model, body):
        self.calls += 1
        raise RuntimeError("adapter bug")


class Scripted(Provider):
    """A provider whose stream is the given chunks (shapes the fake upstream never sends)."""

    def __init__(self, name, chunks):
        super().__init__(name)
        self.chunks = chunks

    async def chat_stream(self, model, body):
        for chunk in self.chunks:
            yield dict(chunk)


class Env:
    def __init__(self, fake):
        self.fake = fake
        self.clock = FakeClock()
        self.board = MemoryBoard(self.clock)
        self.sleeps = []
        self.adapters = {}
        self.retired = []
        self.add_ollama()
        self.add_groq()

    def _replace(self, name, adapter):
        if name in self.adapters:
            self.retired.append(self.adapters[name])
        self.adapters[name] = adapter
        return adapter

    def add_ollama(self, name="ollama", url=None, **kwargs):
        return self._replace(name, OllamaProvider(name, base_url=url or self.fake.url, timeout=5, connect_timeout=1,
                                                   **kwargs))

    def add_groq(self, name="groq", **kwargs):
        return self._replace(name, OpenAICompatProvider(name, base_url=f"{self.fake.url}/{name}/v1", api_key="k",
                                                        timeout=5, connect_timeout=1, **kwargs))

    async def sleep(self, seconds):
        self.sleeps.append(seconds)

    def router(self, *chain, aliases=None):
        registry = AliasTable()
        views = {"mana/t": AliasView("mana/t", "test", tuple(chain or (OLLAMA, GROQ)))}
        for name, entries in (aliases or {}).items():
            views[name] = AliasView(name, "", tuple(entries))
        registry.snapshot = Snapshot(1, views, "mana/t")
        return Router(aliases=registry, providers=Providers(self.adapters), breakers=self.board,
                      sleep=self.sleep, jitter=lambda a, b: 1.0)

    def requests(self, target):
        return self.fake.stats()["requests"].get(target, 0)

    def failures(self, provider, model=""):
        breaker = self.board.get(provider, model)
        return 0 if breaker is None else breaker.consecutive_failures

    def in_flight(self):
        return {name: adapter.in_flight for name, adapter in self.adapters.items()}

    async def close(self):
        for adapter in [*self.adapters.values(), *self.retired]:
            await adapter.aclose()


@pytest.fixture
async def env(fake, settings):
    settings.RETRIES = 1
    settings.RETRY_AFTER_MAX = 5
    settings.FIRST_TOKEN_TIMEOUT = 5
    settings.STREAM_IDLE_TIMEOUT = 5
    settings.BREAKER_FAILURE_THRESHOLD = 2
    settings.BREAKER_BACKOFF_SECONDS = 60
    env = Env(fake)
    yield env
    try:
        # Every test, whatever its path, must leave every concurrency slot free.
        assert env.in_flight() == {name: 0 for name in env.adapters}
    finally:
        await env.close()


def chat_body(model="mana/t", text="hi", **extra):
    return chat(model, text, **extra)


def stream_body(model="mana/t", text="hi", **extra):
    return chat_body(model, text, stream=True, **extra)


def attempts(served_or_error):
    if isinstance(served_or_error, Exception):
        return [(a["model"], a["reason"]) for a in served_or_error.body()["error"]["attempts"]]
    return [(a.target, a.reason) for a in served_or_error.attempts]


# --- the walk: serving, retrying, falling over --------------------------------------------


async def test_first_entry_serves(env):
    served = await env.router().chat(chat_body())
    assert served.entry == OLLAMA and served.alias == "mana/t" and served.attempts == []
    assert served.headers() == {"X-Mana-LLM-Resolved": "ollama/m1"}
    assert served.value["model"] == "ollama/m1"
    assert served.value["choices"][0]["message"]["content"] == "Hello from ollama/m1: hi"
    assert env.requests("groq/m2") == 0 and env.sleeps == []
    assert env.board.writes == []  # nothing changed, nothing written


async def test_retry_once_on_500_then_success(env):
    env.fake.fault("ollama", "m1", times=1, status=500)
    served = await env.router().chat(chat_body())
    assert served.entry == OLLAMA and served.attempts == []
    assert "X-Mana-LLM-Attempts" not in served.headers()
    assert env.sleeps == [0.5]  # 0.5 s x 2^0 x jitter 1.0
    assert env.requests("ollama/m1") == 2 and env.requests("groq/m2") == 0
    assert env.failures("ollama", "m1") == 0  # the success closed what the 500 counted


async def test_backoff_doubles_and_uses_jitter(env, settings):
    settings.RETRIES = 2
    settings.BREAKER_FAILURE_THRESHOLD = 5  # keep the breaker out of the way
    env.fake.fault("ollama", "m1", status=503)
    router = env.router()
    router.jitter = lambda a, b: (a, b) == (0.75, 1.25) and 1.2
    served = await router.chat(chat_body())
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "http_503")]
    assert env.sleeps == pytest.approx([0.6, 1.2])
    assert env.requests("ollama/m1") == 3  # RETRIES + 1


async def test_retries_stop_once_the_entry_trips_its_own_breaker(env, settings):
    settings.RETRIES = 3
    settings.BREAKER_FAILURE_THRESHOLD = 2
    env.fake.fault("ollama", "m1", status=503)
    served = await env.router().chat(chat_body())
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "http_503")]
    assert env.requests("ollama/m1") == 2  # the second failure opened it: no third ask
    assert env.sleeps == [0.5]


async def test_persistent_5xx_falls_over_after_retries(env):
    env.fake.fault("ollama", "m1", status=503)
    body = chat_body()
    served = await env.router().chat(body)
    assert body == chat_body()  # the same, unmutated body went to every entry
    assert served.entry == GROQ
    assert attempts(served) == [("ollama/m1", "http_503")]
    assert served.headers() == {"X-Mana-LLM-Resolved": "groq/m2", "X-Mana-LLM-Attempts": "ollama/m1=http_503"}
    assert env.requests("ollama/m1") == 2  # RETRIES + 1
    assert served.value["model"] == "groq/m2"
    assert served.value["choices"][0]["message"]["content"] == "Hello from groq/m2: hi"


async def test_429_with_short_retry_after_is_waited_out(env):
    env.fake.fault("ollama", "m1", times=1, status=429, headers={"Retry-After": "2"})
    served = await env.router().chat(chat_body())
    assert served.entry == OLLAMA and served.attempts == []
    assert env.sleeps == [2.0]
    assert env.requests("ollama/m1") == 2 and env.requests("groq/m2") == 0


async def test_retry_after_equal_to_the_maximum_is_waited_out(env):
    env.fake.fault("ollama", "m1", times=1, status=429, headers={"Retry-After": "5"})
    served = await env.router().chat(chat_body())
    assert served.entry == OLLAMA and env.sleeps == [5.0]


async def test_an_entry_tried_twice_is_listed_once_with_its_last_reason(env):
    env.fake.fault("ollama", "m1", times=1, status=429, headers={"Retry-After": "1"})
    env.fake.fault("ollama", "m1", status=502)
    served = await env.router().chat(chat_body())
    assert attempts(served) == [("ollama/m1", "http_502")]
    assert served.headers()["X-Mana-LLM-Attempts"] == "ollama/m1=http_502"
    assert env.sleeps == [1.0]


async def test_429_with_long_retry_after_falls_over_at_once(env):
    env.fake.fault("ollama", "m1", status=429, headers={"Retry-After": "30"})
    served = await env.router().chat(chat_body())
    assert served.entry == GROQ
    assert attempts(served) == [("ollama/m1", "rate_limit")]
    assert env.sleeps == []
    assert env.requests("ollama/m1") == 1


async def test_reset_before_answer_is_retried_then_falls_over(env):
    env.fake.fault("ollama", "m1", reset=True)
    served = await env.router().chat(chat_body())
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "protocol_error")]
    assert env.requests("ollama/m1") == 2 and env.sleeps == [0.5]


async def test_connect_error_falls_over_without_retry(env):
    env.add_ollama(url=f"http://127.0.0.1:{unused_port()}")
    served = await env.router().chat(chat_body())
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "connect_error")]
    assert env.sleeps == []
    assert env.failures("ollama") == 1 and env.board.get("ollama", "m1") is None  # provider level


async def test_first_token_timeout_falls_over_and_is_not_asked_twice(env, settings):
    settings.FIRST_TOKEN_TIMEOUT = 0.3
    env.fake.fault("ollama", "m1", first_token_delay=3)
    started = time.monotonic()
    served = await env.router().chat(chat_body())
    assert time.monotonic() - started < 2
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "first_token_timeout")]
    assert env.requests("ollama/m1") == 1 and env.sleeps == []
    assert env.failures("ollama", "m1") == 1


async def test_entry_first_token_timeout_overrides_the_setting(env, settings):
    settings.FIRST_TOKEN_TIMEOUT = 60
    env.fake.fault("ollama", "m1", first_token_delay=3)
    served = await env.router(Entry("ollama", "m1", first_token_timeout=0.3), GROQ).chat(chat_body())
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "first_token_timeout")]


async def test_read_timeout_falls_over_without_retry(env):
    env._replace("ollama", OllamaProvider("ollama", base_url=env.fake.url, timeout=0.3, connect_timeout=1))
    env.fake.fault("ollama", "m1", delay=3)
    served = await env.router().chat(chat_body())
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "timeout")]
    assert env.requests("ollama/m1") == 1 and env.sleeps == []
    assert env.failures("ollama", "m1") == 1 and env.board.get("ollama") is None


async def test_metrics_count_fallbacks_and_retries(env):
    from prometheus_client import REGISTRY

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    fallback = {"from_model": "ollama/m1", "to_model": "groq/m2", "reason": "http_504"}
    retry = {"provider": "ollama", "model": "m1", "reason": "http_504"}
    before = sample("mana_llm_fallback_total", **fallback), sample("mana_llm_retries_total", **retry)
    env.fake.fault("ollama", "m1", status=504)
    await env.router().chat(chat_body())
    after = sample("mana_llm_fallback_total", **fallback), sample("mana_llm_retries_total", **retry)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


@pytest.mark.parametrize("upstream, model", [("ollama", "m1"), ("groq", "m2")])
async def test_context_length_exceeded_falls_over_breaker_untouched(env, upstream, model):
    env.fake.fault(upstream, model, error_code="context_length_exceeded")
    first, second = (OLLAMA, GROQ) if upstream == "ollama" else (GROQ, OLLAMA)
    served = await env.router(first, second).chat(chat_body())
    assert served.entry == second
    assert attempts(served) == [(f"{upstream}/{model}", "context_length_exceeded")]
    assert env.requests(f"{upstream}/{model}") == 1 and env.sleeps == []
    assert env.board.get(upstream, model) is None and env.board.get(upstream) is None


# --- skips --------------------------------------------------------------------------------


async def test_skip_unconfigured(env):
    served = await env.router(Entry("openrouter", "x/y"), OLLAMA).chat(chat_body())
    assert served.entry == OLLAMA and attempts(served) == [("openrouter/x/y", "unconfigured")]
    assert served.headers()["X-Mana-LLM-Attempts"] == "openrouter/x/y=unconfigured"


@pytest.mark.parametrize("level", ["deployment", "provider"])
async def test_skip_unhealthy(env, level):
    for _ in range(2):
        env.board.record_failure("ollama", "m1", level, "http_500: boom")
    served = await env.router().chat(chat_body())
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "cache-unhealthy")]
    assert env.requests("ollama/m1") == 0


async def test_skip_saturated(env):
    ollama = env.add_ollama(max_concurrent=1)
    assert ollama.try_acquire()
    try:
        served = await env.router().chat(chat_body())
        assert served.entry == GROQ and attempts(served) == [("ollama/m1", "saturated")]
        assert env.requests("ollama/m1") == 0
        assert ollama.in_flight == 1  # only the slot the test holds
    finally:
        ollama.release()


async def test_skip_disabled(env):
    served = await env.router(Entry("ollama", "m1", enabled=False), GROQ).chat(chat_body())
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "disabled")]
    assert env.requests("ollama/m1") == 0


# --- propagate at once --------------------------------------------------------------------


def assert_untouched(env):
    assert env.board.writes == [] and env.board.get("ollama") is None and env.board.get("groq") is None
    assert env.board.get("ollama", "m1") is None and env.board.get("groq", "m2") is None


@pytest.mark.parametrize("upstream, model", [("groq", "m2"), ("ollama", "m1")])
async def test_content_policy_propagates(env, upstream, model):
    env.fake.fault(upstream, model, error_code="content_policy_violation")
    first, second = (GROQ, OLLAMA) if upstream == "groq" else (OLLAMA, GROQ)
    with pytest.raises(errors.Blocked) as caught:
        await env.router(first, second).chat(chat_body())
    error = caught.value
    assert error.status == 422 and error.body()["error"]["type"] == "blocked"
    assert "safety" in error.message
    assert env.requests(f"{upstream}/{model}") == 1 and env.requests(second.target) == 0
    assert env.sleeps == []
    assert_untouched(env)


async def test_other_4xx_propagates_with_upstream_message(env):
    env.fake.fault("groq", "m2", status=400, body={"error": {
        "message": "temperature must be at most 2", "type": "invalid_request_error", "param": "temperature",
        "code": None}})
    with pytest.raises(errors.UpstreamRequestError) as caught:
        await env.router(GROQ, OLLAMA).chat(chat_body())
    body = caught.value.body()["error"]
    assert caught.value.status == 400 and body["type"] == "invalid_request_error"
    assert "temperature must be at most 2" in body["message"]
    assert env.requests("ollama/m1") == 0 and env.requests("groq/m2") == 1
    assert_untouched(env)


async def test_upstream_auth_propagates_as_502(env):
    env.fake.fault("groq", "m2", error_code="invalid_api_key")
    with pytest.raises(errors.UpstreamAuthError) as caught:
        await env.router(GROQ, OLLAMA).chat(chat_body())
    assert caught.value.status == 502 and caught.value.body()["error"]["type"] == "auth"
    assert env.requests("ollama/m1") == 0
    assert_untouched(env)


async def test_propagated_error_carries_the_walk_so_far(env):
    env.fake.fault("groq", "m2", error_code="invalid_api_key")
    with pytest.raises(errors.UpstreamAuthError) as caught:
        await env.router(Entry("openrouter", "x"), GROQ, OLLAMA).chat(chat_body())
    assert caught.value.headers["X-Mana-LLM-Attempts"] == "openrouter/x=unconfigured"


async def test_tools_to_a_model_without_tools_is_a_capability_error(env):
    with pytest.raises(errors.CapabilityError) as caught:
        await env.router(OLLAMA, GROQ).chat(chat_body(text="weather?", tools=TOOLS))
    error = caught.value
    assert error.status == 400 and error.body()["error"]["type"] == "capability"
    assert error.body()["error"]["param"] == "tools"
    # /api/show was asked (it counts under the model too), the chat never was.
    assert env.requests("ollama/m1") == 1 and "messages" not in env.fake.stats()["last_request"]["ollama/m1"]
    assert env.requests("groq/m2") == 0
    assert_untouched(env)


async def test_tools_to_a_tool_capable_ollama_model_pass(env):
    served = await env.router(Entry("ollama", "qwen2.5:7b"), GROQ).chat(chat_body(text="weather?", tools=TOOLS))
    assert served.entry.target == "ollama/qwen2.5:7b"
    assert served.value["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_show_capabilities_decide(env):
    env.fake.fault("ollama", "qwen2.5:7b", capabilities=["completion"])
    with pytest.raises(errors.CapabilityError):
        await env.router(Entry("ollama", "qwen2.5:7b")).chat(chat_body(tools=TOOLS))


async def test_unknown_exception_propagates_without_fallback(env):
    boom = env.adapters["boom"] = Exploding("boom")
    router = env.router(Entry("boom", "x"), GROQ)
    with pytest.raises(RuntimeError, match="adapter bug"):
        await router.chat(chat_body())
    with pytest.raises(RuntimeError, match="adapter bug"):
        await router.chat_stream(stream_body())
    with pytest.raises(RuntimeError, match="adapter bug"):
        await router.embed({"model": "mana/t", "input": "x"})
    assert boom.calls == 3 and env.sleeps == []
    assert env.requests("groq/m2") == 0
    assert boom.in_flight == 0
    assert env.board.get("boom", "x") is None and env.board.get("boom") is None


# --- exhausted chains ---------------------------------------------------------------------


async def test_all_fail_is_503_with_attempts_in_order(env):
    env.fake.fault("ollama", "m1", status=500)
    env.fake.fault("groq", "m2", status=503)
    chain = (Entry("openrouter", "x"), OLLAMA, Entry("ollama", "m3", enabled=False), GROQ)
    with pytest.raises(NoHealthyProvider) as caught:
        await env.router(*chain).chat(chat_body())
    error = caught.value
    assert error.status == 503
    body = error.body()["error"]
    assert body["type"] == "no_healthy_provider"
    assert attempts(error) == [("openrouter/x", "unconfigured"), ("ollama/m1", "http_500"),
                               ("ollama/m3", "disabled"), ("groq/m2", "http_503")]
    assert error.headers["X-Mana-LLM-Attempts"] == \
        "openrouter/x=unconfigured, ollama/m1=http_500, ollama/m3=disabled, groq/m2=http_503"
    assert "Retry-After" not in error.headers
    assert env.sleeps == [0.5, 0.5]


async def test_every_entry_skipped_by_open_breakers_gives_retry_after(env):
    for _ in range(2):
        env.board.record_failure("ollama", "m1", "deployment", "http_500")
    env.clock.advance(10)
    for _ in range(2):
        env.board.record_failure("groq", "m2", "provider", "connect_error")
    env.clock.advance(10)  # ollama/m1 half-opens in 40 s, groq in 50 s
    with pytest.raises(NoHealthyProvider) as caught:
        await env.router().chat(chat_body())
    assert attempts(caught.value) == [("ollama/m1", "cache-unhealthy"), ("groq/m2", "cache-unhealthy")]
    assert caught.value.headers["Retry-After"] == "40"
    assert env.requests("ollama/m1") == 0 and env.requests("groq/m2") == 0


async def test_no_retry_after_when_not_every_entry_was_breaker_skipped(env):
    for _ in range(2):
        env.board.record_failure("ollama", "m1", "deployment", "http_500")
    with pytest.raises(NoHealthyProvider) as caught:
        await env.router(OLLAMA, Entry("openrouter", "x")).chat(chat_body())
    assert "Retry-After" not in caught.value.headers


async def test_every_attempt_rate_limited_is_429(env):
    env.fake.fault("ollama", "m1", status=429, headers={"Retry-After": "60"})
    env.fake.fault("groq", "m2", status=429)
    with pytest.raises(errors.RateLimited) as caught:
        await env.router(Entry("openrouter", "x"), OLLAMA, GROQ).chat(chat_body())
    error = caught.value
    assert error.status == 429 and error.body()["error"]["type"] == "rate_limit"
    assert attempts(error) == [("openrouter/x", "unconfigured"), ("ollama/m1", "rate_limit"),
                               ("groq/m2", "rate_limit")]
    assert error.headers["X-Mana-LLM-Attempts"] == "openrouter/x=unconfigured, ollama/m1=rate_limit, groq/m2=rate_limit"
    assert env.sleeps == [0.5]  # groq's 429 had no Retry-After: ordinary backoff
    assert env.requests("ollama/m1") == 1 and env.requests("groq/m2") == 2


# --- model names (README#model-names) -------------------------------------------------------


async def test_direct_provider_model_has_no_fallback(env):
    env.fake.fault("groq", "x", status=500)
    router = env.router()
    with pytest.raises(NoHealthyProvider) as caught:
        await router.chat(chat_body("groq/x"))
    assert attempts(caught.value) == [("groq/x", "http_500")]
    assert env.requests("ollama/m1") == 0
    env.fake.clear()
    env.clock.advance(61)  # its breaker opened (two failed attempts)
    served = await router.chat(chat_body("groq/x"))
    assert served.entry == Entry("groq", "x") and served.alias is None
    assert served.headers() == {"X-Mana-LLM-Resolved": "groq/x"}


async def test_direct_model_with_slashes(env):
    env.add_groq("openrouter")
    served = await env.router().chat(chat_body("openrouter/anthropic/claude-3-haiku"))
    assert served.entry == Entry("openrouter", "anthropic/claude-3-haiku")
    assert served.value["model"] == "openrouter/anthropic/claude-3-haiku"
    assert env.requests("openrouter/anthropic/claude-3-haiku") == 1


async def test_direct_model_of_an_unconfigured_provider_is_503(env):
    with pytest.raises(NoHealthyProvider) as caught:
        await env.router().chat(chat_body("together/x"))
    assert attempts(caught.value) == [("together/x", "unconfigured")]
    assert "Retry-After" not in caught.value.headers


async def test_bare_name_is_ollama(env):
    served = await env.router().chat(chat_body("gemma3:4b"))
    assert served.entry == Entry("ollama", "gemma3:4b") and served.alias is None
    assert served.value["model"] == "ollama/gemma3:4b"


@pytest.mark.parametrize("model", [None, ""])
async def test_missing_model_uses_the_default_alias(env, model):
    body = chat_body()
    if model is None:
        del body["model"]
    else:
        body["model"] = model
    served = await env.router().chat(body)
    assert served.alias == "mana/t" and served.entry == OLLAMA


async def test_unknown_alias_is_404_listing_known_aliases(env):
    router = env.router(aliases={"mana/other": (GROQ,)})
    with pytest.raises(ModelNotFound) as caught:
        await router.chat(chat_body("mana/nope"))
    error = caught.value
    assert error.status == 404 and error.body()["error"]["type"] == "model_not_found"
    assert "mana/other" in error.message and "mana/t" in error.message
    assert env.fake.stats()["requests"] == {}


async def test_unknown_provider_is_404(env):
    with pytest.raises(ModelNotFound):
        await env.router().chat(chat_body("nope/x"))


# --- breakers -----------------------------------------------------------------------------


DEPLOYMENT_FAULTS = {
    "http_500": {"status": 500},
    "rate_limit": {"status": 429},
    "protocol_error": {"reset": True},
    "first_token_timeout": {"first_token_delay": 3},
}


@pytest.mark.parametrize("reason", list(DEPLOYMENT_FAULTS))
async def test_deployment_breaker_trips_after_threshold_and_half_open_success_closes(env, settings, reason):
    settings.RETRIES = 0
    settings.FIRST_TOKEN_TIMEOUT = 0.2
    env.fake.fault("ollama", "m1", **DEPLOYMENT_FAULTS[reason])
    router = env.router()

    served = await router.chat(chat_body())
    assert attempts(served) == [("ollama/m1", reason)]
    assert env.failures("ollama", "m1") == 1 and env.board.status("ollama", "m1") == "healthy"
    assert env.board.get("ollama") is None  # nothing at the provider level

    served = await router.chat(chat_body())
    assert env.failures("ollama", "m1") == 2 and env.board.status("ollama", "m1") == "unhealthy"
    assert env.requests("ollama/m1") == 2

    served = await router.chat(chat_body())
    assert attempts(served) == [("ollama/m1", "cache-unhealthy")]
    assert env.requests("ollama/m1") == 2  # not asked while open

    # One overloaded model does not take down the other models of the provider.
    assert (await router.chat(chat_body("ollama/m9"))).entry == Entry("ollama", "m9")

    env.fake.clear()
    env.clock.advance(61)  # half-open: the next call is let through, its success closes
    served = await router.chat(chat_body())
    assert served.entry == OLLAMA and served.attempts == []
    assert env.failures("ollama", "m1") == 0 and env.board.status("ollama", "m1") == "healthy"


async def test_retries_count_against_the_breaker(env):
    env.fake.fault("ollama", "m1", status=500)
    await env.router().chat(chat_body())  # 2 attempts (RETRIES=1): the threshold
    assert env.board.status("ollama", "m1") == "unhealthy"


async def test_half_open_failure_reopens_for_a_full_window(env, settings):
    settings.RETRIES = 0
    for _ in range(2):
        env.board.record_failure("ollama", "m1", "deployment", "http_500")
    env.clock.advance(61)
    env.fake.fault("ollama", "m1", status=500)
    served = await env.router().chat(chat_body())
    assert attempts(served) == [("ollama/m1", "http_500")]
    breaker = env.board.get("ollama", "m1")
    assert breaker.unhealthy_until == pytest.approx(env.clock() + 60)


async def test_connect_errors_count_per_provider(env):
    env.add_ollama(url=f"http://127.0.0.1:{unused_port()}")
    router = env.router()
    await router.chat(chat_body())
    assert env.failures("ollama") == 1 and env.board.status("ollama") == "healthy"
    await router.chat(chat_body())
    assert env.board.status("ollama") == "unhealthy"
    assert env.board.get("ollama", "m1") is None
    # Every model of the provider is skipped now.
    with pytest.raises(NoHealthyProvider) as caught:
        await router.chat(chat_body("ollama/other"))
    assert attempts(caught.value) == [("ollama/other", "cache-unhealthy")]
    assert caught.value.headers["Retry-After"] == "60"


async def test_deployment_success_closes_the_provider_breaker(env):
    env.board.record_failure("ollama", "", "provider", "connect_error")
    assert env.failures("ollama") == 1
    await env.router().chat(chat_body())
    assert env.failures("ollama") == 0


async def test_state_changes_are_persisted_only_on_change(env):
    env.fake.fault("ollama", "m1", times=1, status=500)
    router = env.router()
    await router.chat(chat_body())
    assert [name for name, _ in env.board.writes] == ["write_row", "write_row"]  # failure, then close
    await router.chat(chat_body())
    assert len(env.board.writes) == 2


# --- embeddings ---------------------------------------------------------------------------


async def test_embeddings_fall_back_on_500(env):
    env.fake.fault("ollama", "m1", status=500)
    served = await env.router().embed({"model": "mana/t", "input": ["a", "b"]})
    assert served.entry == GROQ and attempts(served) == [("ollama/m1", "http_500")]
    assert served.value["model"] == "groq/m2" and len(served.value["data"]) == 2
    assert env.requests("ollama/m1") == 2 and env.sleeps == [0.5]
    assert served.headers()["X-Mana-LLM-Attempts"] == "ollama/m1=http_500"


async def test_embeddings_first_entry(env):
    served = await env.router().embed({"model": "mana/t", "input": "a"})
    assert served.entry == OLLAMA and served.value["model"] == "ollama/m1"
    assert served.headers() == {"X-Mana-LLM-Resolved": "ollama/m1"}


async def test_embeddings_ignore_tools_capability(env):
    # tools in an embeddings body mean nothing: no /api/show capability refusal.
    served = await env.router().embed({"model": "mana/t", "input": "a", "tools": TOOLS})
    assert served.entry == OLLAMA


# --- streams: before the first token --------------------------------------------------------


@pytest.mark.parametrize("fault, reason, asked", [
    ({"status": 500}, "http_500", 2),
    ({"reset": True}, "protocol_error", 2),
    ({"first_token_delay": 3}, "first_token_timeout", 1),
    ({"error_event_after": 0}, "http_502", 2),
])
async def test_stream_falls_back_before_the_first_token(env, settings, fault, reason, asked):
    settings.FIRST_TOKEN_TIMEOUT = 0.3
    env.fake.fault("ollama", "m1", **fault)
    served = await env.router().chat_stream(stream_body())
    assert served.headers() == {"X-Mana-LLM-Resolved": "groq/m2", "X-Mana-LLM-Attempts": f"ollama/m1={reason}"}
    chunks = await collect(served.value)
    assert text_of(chunks) == "Hello from groq/m2: hi"
    assert all(c["model"] == "groq/m2" for c in chunks)
    assert not any("error" in c for c in chunks)
    assert env.requests("ollama/m1") == asked


async def test_stream_whole_chain_fails_is_an_error_not_a_stream(env):
    env.fake.fault("ollama", "m1", status=500)
    env.fake.fault("groq", "m2", status=503)
    with pytest.raises(NoHealthyProvider) as caught:
        await env.router().chat_stream(stream_body())
    assert attempts(caught.value) == [("ollama/m1", "http_500"), ("groq/m2", "http_503")]


async def test_stream_propagates_blocked(env):
    env.fake.fault("groq", "m2", error_code="content_policy_violation")
    with pytest.raises(errors.Blocked):
        await env.router(GROQ, OLLAMA).chat_stream(stream_body())
    assert env.requests("ollama/m1") == 0
    assert_untouched(env)


async def test_stream_capability_error(env):
    with pytest.raises(errors.CapabilityError):
        await env.router(OLLAMA, GROQ).chat_stream(stream_body(tools=TOOLS))
    assert env.requests("groq/m2") == 0


# --- streams: committed --------------------------------------------------------------------


@pytest.mark.parametrize("entry", [OLLAMA, GROQ])
async def test_stream_happy_path(env, entry):
    served = await env.router(entry).chat_stream(stream_body())
    assert served.headers() == {"X-Mana-LLM-Resolved": entry.target}
    chunks = await collect(served.value)
    assert text_of(chunks) == f"Hello from {entry.target}: hi"
    assert all(c["model"] == entry.target for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in c for c in chunks)  # not asked for: dropped


@pytest.mark.parametrize("entry", [OLLAMA, GROQ])
async def test_stream_include_usage_forwards_a_final_usage_chunk(env, entry):
    served = await env.router(entry).chat_stream(stream_body(stream_options={"include_usage": True}))
    chunks = await collect(served.value)
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    assert last["model"] == entry.target
    assert all(c["model"] == entry.target for c in chunks)
    assert sum(1 for c in chunks if c.get("usage")) == 1


@pytest.mark.parametrize("include_usage", [False, True])
async def test_usage_inside_a_content_chunk_follows_include_usage(env, include_usage):
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    env.adapters["scripted"] = Scripted("scripted", [
        {"object": "chat.completion.chunk", "model": "x", "choices": [{"index": 0, "delta": {"content": "hey"}}]},
        {"object": "chat.completion.chunk", "model": "x",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage},
    ])
    body = stream_body(stream_options={"include_usage": include_usage})
    served = await env.router(Entry("scripted", "x")).chat_stream(body)
    chunks = await collect(served.value)
    assert [c["model"] for c in chunks] == ["scripted/x", "scripted/x"]
    assert chunks[-1].get("usage") == (usage if include_usage else None)


@pytest.mark.parametrize("upstream, model, fallback", [("groq", "m2", OLLAMA), ("ollama", "m1", GROQ)])
async def test_stream_cut_mid_stream_ends_with_an_error_event(env, upstream, model, fallback):
    env.fake.fault(upstream, model, cut_after=2)
    served = await env.router(Entry(upstream, model), fallback).chat_stream(stream_body())
    events = await collect(served.value)
    assert "error" in events[-1] and events[-1]["error"]["code"] == "protocol_error"
    chunks = events[:-1]
    assert [c["choices"][0]["delta"]["content"] for c in chunks if has_content(c)] == ["Hello ", "from "]
    assert all(c["model"] == f"{upstream}/{model}" for c in chunks)
    assert not any(c["choices"][0].get("finish_reason") for c in chunks)  # never ends like a complete answer
    assert env.requests(fallback.target) == 0  # no other provider's text spliced in
    assert env.failures(upstream, model) == 1


async def test_stream_stall_mid_stream_ends_with_an_error_event(env, settings):
    settings.STREAM_IDLE_TIMEOUT = 0.3
    env.fake.fault("groq", "m2", stall_after=2)
    served = await env.router(GROQ, OLLAMA).chat_stream(stream_body())
    started = time.monotonic()
    events = await collect(served.value)
    assert time.monotonic() - started < 2
    assert text_of(events[:-1]) == "Hello from "
    assert events[-1]["error"]["code"] == "timeout"
    assert env.requests("ollama/m1") == 0
    assert env.failures("groq", "m2") == 1
    assert await eventually(lambda: env.fake.stats()["active"] == 0)


@pytest.mark.parametrize("upstream, model", [("groq", "m2"), ("ollama", "m1")])
async def test_stream_upstream_error_event_ends_with_an_error_event(env, upstream, model):
    env.fake.fault(upstream, model, error_event_after=2)
    served = await env.router(Entry(upstream, model)).chat_stream(stream_body())
    events = await collect(served.value)
    assert text_of(events[:-1]) == "Hello from "
    error = events[-1]["error"]
    assert "upstream exploded" in error["message"] and error["type"] == "stream_error"


@pytest.mark.parametrize("entry", [OLLAMA, GROQ])
async def test_stream_malformed_event_is_skipped(env, entry):
    env.fake.fault(entry.provider, entry.model, malformed_after=2)
    served = await env.router(entry).chat_stream(stream_body())
    events = await collect(served.value)
    assert not any("error" in e for e in events)
    assert text_of(events) == f"Hello from {entry.target}: hi"


@pytest.mark.parametrize("entry", [OLLAMA, GROQ])
async def test_stream_without_done_is_finalised(env, entry):
    env.fake.fault(entry.provider, entry.model, no_done=True)
    served = await env.router(entry).chat_stream(stream_body())
    events = await asyncio.wait_for(collect(served.value), 3)
    assert not any("error" in e for e in events)
    assert text_of(events) == f"Hello from {entry.target}: hi"


async def test_stream_tool_call_counts_as_the_first_token(env):
    entry = Entry("ollama", "qwen2.5:7b")
    served = await env.router(entry, GROQ).chat_stream(stream_body(text="weather in Paris?", tools=TOOLS))
    chunks = await collect(served.value)
    calls = [call for c in chunks if c.get("choices") for call in c["choices"][0]["delta"].get("tool_calls") or ()]
    assert calls and calls[0]["function"]["name"] == "get_weather"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["model"] == "ollama/qwen2.5:7b" for c in chunks)


async def test_empty_stream_is_a_success(env):
    env.fake.fault("groq", "m2", empty=True)
    served = await env.router(GROQ, OLLAMA).chat_stream(stream_body())
    assert served.headers() == {"X-Mana-LLM-Resolved": "groq/m2"}
    assert await collect(served.value) == []
    assert env.requests("ollama/m1") == 0


async def test_empty_ollama_stream_is_only_a_finish_chunk(env):
    env.fake.fault("ollama", "m1", empty=True)
    served = await env.router(OLLAMA, GROQ).chat_stream(stream_body())
    events = await collect(served.value)
    assert not any("error" in e for e in events) and text_of(events) == ""
    assert [e["choices"][0]["finish_reason"] for e in events] == ["stop"]
    assert events[0]["model"] == "ollama/m1"
    assert env.requests("groq/m2") == 0


# --- concurrency slots on every path --------------------------------------------------------


@pytest.fixture
def capped(env):
    """Ollama and groq with a cap of one: a leaked slot shows as `saturated` next time."""
    env.add_ollama(max_concurrent=1)
    env.add_groq(max_concurrent=1)
    return env


def disconnects(env):
    return env.fake.stats()["disconnects"]


async def assert_free(env):
    assert env.in_flight() == {name: 0 for name in env.adapters}
    env.board.clear()  # breakers the faults opened are not what this checks
    served = await env.router().chat(chat_body())  # a leaked slot would be skipped as saturated
    assert served.entry == OLLAMA and served.attempts == []


@pytest.mark.parametrize("fault", [
    None, {"status": 500}, {"status": 429, "headers": {"Retry-After": "60"}}, {"reset": True},
    {"first_token_delay": 3}, {"error_code": "context_length_exceeded"},
    {"error_code": "content_policy_violation"}, {"error_code": "invalid_api_key"},
])
async def test_slots_released_on_plain_calls(capped, settings, fault):
    settings.FIRST_TOKEN_TIMEOUT = 0.3
    if fault:
        capped.fake.fault("ollama", "m1", times=2, **fault)
    try:
        await capped.router().chat(chat_body())
    except errors.ProviderError:
        pass
    assert capped.in_flight() == {"ollama": 0, "groq": 0}
    capped.fake.clear()
    await assert_free(capped)


async def test_slots_released_on_connect_error_and_exhaustion(capped):
    capped.add_ollama(url=f"http://127.0.0.1:{unused_port()}", max_concurrent=1)
    capped.fake.fault("groq", "m2", status=500)
    with pytest.raises(NoHealthyProvider):
        await capped.router().chat(chat_body())
    assert capped.in_flight() == {"ollama": 0, "groq": 0}


async def test_slots_released_on_capability_refusal_and_embeddings(capped):
    with pytest.raises(errors.CapabilityError):
        await capped.router().chat(chat_body(tools=TOOLS))
    capped.fake.fault("ollama", "m1", times=2, status=500)
    await capped.router().embed({"model": "mana/t", "input": "a"})
    await assert_free(capped)


async def test_slot_held_while_a_stream_is_open(capped):
    served = await capped.router().chat_stream(stream_body())
    assert capped.adapters["ollama"].in_flight == 1
    other = await capped.router().chat(chat_body())
    assert attempts(other) == [("ollama/m1", "saturated")]
    await collect(served.value)
    await assert_free(capped)


async def test_slots_released_when_a_stream_completes(capped):
    served = await capped.router().chat_stream(stream_body())
    await collect(served.value)
    await assert_free(capped)


async def test_slots_released_on_pre_token_stream_failures(capped, settings):
    settings.FIRST_TOKEN_TIMEOUT = 0.3
    capped.fake.fault("ollama", "m1", times=1, first_token_delay=3)
    capped.fake.fault("groq", "m2", times=2, status=500)
    with pytest.raises(NoHealthyProvider):
        await capped.router().chat_stream(stream_body())
    assert capped.in_flight() == {"ollama": 0, "groq": 0}
    await assert_free(capped)


async def test_slots_released_after_a_mid_stream_error(capped):
    capped.fake.fault("ollama", "m1", times=1, cut_after=2)
    served = await capped.router().chat_stream(stream_body())
    events = await collect(served.value)
    assert "error" in events[-1]
    await assert_free(capped)


async def test_stream_aclosed_early_releases_and_cancels_upstream(capped):
    capped.fake.fault("ollama", "m1", times=1, chunk_delay=0.2)
    served = await capped.router().chat_stream(stream_body(text=LONG_TEXT))
    assert has_content(await anext(served.value))
    before = disconnects(capped)
    await served.value.aclose()
    assert capped.adapters["ollama"].in_flight == 0
    assert await eventually(lambda: disconnects(capped) > before)
    assert await eventually(lambda: capped.fake.stats()["active"] == 0)
    assert capped.board.get("ollama", "m1") is None
    await served.value.aclose()  # idempotent
    await assert_free(capped)


async def test_stream_never_iterated_then_aclosed(capped):
    capped.fake.fault("ollama", "m1", times=1, chunk_delay=0.2)
    served = await capped.router().chat_stream(stream_body(text=LONG_TEXT))
    before = disconnects(capped)
    await served.value.aclose()
    assert capped.adapters["ollama"].in_flight == 0
    assert await eventually(lambda: disconnects(capped) > before)
    await served.value.aclose()
    await assert_free(capped)


async def test_stream_cancelled_mid_iteration(capped):
    capped.fake.fault("ollama", "m1", times=1, chunk_delay=0.2)
    served = await capped.router().chat_stream(stream_body(text=LONG_TEXT))
    got = []

    async def consume():
        async for event in served.value:
            got.append(event)

    task = asyncio.create_task(consume())
    assert await eventually(lambda: any(has_content(e) for e in got))
    before = disconnects(capped)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert capped.adapters["ollama"].in_flight == 0
    assert await eventually(lambda: disconnects(capped) > before)
    assert await eventually(lambda: capped.fake.stats()["active"] == 0)
    await served.value.aclose()  # harmless after the cancellation
    assert not any("error" in e for e in got)
    assert capped.board.get("ollama", "m1") is None  # a client leaving is not an upstream failure
    await assert_free(capped)


async def test_slot_released_when_walk_is_cancelled_before_first_token(capped):
    capped.fake.fault("ollama", "m1", times=1, first_token_delay=3)
    task = asyncio.create_task(capped.router().chat_stream(stream_body()))
    assert await eventually(lambda: capped.requests("ollama/m1") == 1)
    before = disconnects(capped)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert capped.in_flight() == {"ollama": 0, "groq": 0}
    assert await eventually(lambda: disconnects(capped) > before)
    assert capped.requests("groq/m2") == 0
    assert capped.board.get("ollama", "m1") is None  # a client leaving is not an upstream failure
    await assert_free(capped)

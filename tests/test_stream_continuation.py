"""Issue 14: stream continuation (README#stream-continuation), end to end.

A real gateway (daphne) whose aliases come from a YAML file with `stream_continuation` and
`prefill`, the fake upstream answering the same fixed text on every entry (so a continued
answer can be compared word for word with the complete one), and the official `openai`
SDK's stream iterator as the caller. STREAM_IDLE_TIMEOUT is short so a stall is cut fast;
the breaker threshold is high so one test's failures do not open breakers for the next.
"""
import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from health.board import BreakerBoard
from providers import errors
from providers.base import Provider
from providers.ollama import OllamaProvider
from providers.openai_compat import OpenAICompatProvider
from routing.router import Router
from routing.table import AliasTable, AliasView, Entry, Snapshot
from tests.helpers import FakeClock, chat, collect, sdk, sse_events, text_of, user_messages, wait_for
from tests.server import gateway_server

ANSWER = "one two three four five six seven eight nine ten eleven twelve"
QWEN, LLAMA = "ollama/qwen2.5:7b", "ollama/llama3.1:8b"
GROQ, CLAUDE = "groq/llama-3.1-8b-instant", "openrouter/anthropic/claude-3-haiku"

ALIASES = f"""
aliases:
  mana/cont:
    description: cut streams continue on the prefill entries
    stream_continuation: true
    chain:
      - {QWEN}
      - {GROQ}
      - {{target: {CLAUDE}, prefill: true, first_token_timeout: 1}}
      - {{target: {LLAMA}, prefill: true}}
  mana/self:
    stream_continuation: true
    chain:
      - {{target: {QWEN}, prefill: true}}
      - {GROQ}
  mana/none-left:
    stream_continuation: true
    chain:
      - {{target: {CLAUDE}, prefill: true}}
      - {QWEN}
      - {GROQ}
  mana/plain:
    chain:
      - {QWEN}
      - {{target: {CLAUDE}, prefill: true}}
default: mana/cont
"""


def continuation_gateway(fake_upstream, tmp_path_factory, idle_timeout):
    workdir = tmp_path_factory.mktemp("continuation")
    (workdir / "aliases.yaml").write_text(ALIASES)
    return gateway_server(workdir, fake_upstream.url, {
        "ALIASES_FILE": str(workdir / "aliases.yaml"), "STREAM_IDLE_TIMEOUT": idle_timeout, "FIRST_TOKEN_TIMEOUT": "5",
        "RETRIES": "0", "BREAKER_FAILURE_THRESHOLD": "1000", "OLLAMA_MAX_CONCURRENT": "1"}).prepare().start()


@pytest.fixture(scope="module")
def gw(fake_upstream, tmp_path_factory):
    server = continuation_gateway(fake_upstream, tmp_path_factory, "1")  # stalls end fast
    yield server
    server.stop()


@pytest.fixture(scope="module")
def patient_gw(fake_upstream, tmp_path_factory):
    """The same aliases with a long idle timeout: a stalled continuation stays open until
    the client leaves, however loaded the machine is."""
    server = continuation_gateway(fake_upstream, tmp_path_factory, "30")
    yield server
    server.stop()


@pytest.fixture
def client(gw):
    return sdk(gw)


def answer_on(fake, *targets, **fault):
    """``targets`` answer ANSWER, once with ``fault`` if given, then for good."""
    for target in targets:
        provider, _, model = target.partition("/")
        if fault:
            fake.fault(provider, model, times=1, text=ANSWER, **fault)
        fake.fault(provider, model, text=ANSWER)


def requests(fake, target):
    return fake.stats()["requests"].get(target, 0)


def stream_text(client, model, **extra):
    """The caller's view through the SDK: (assembled text, chunks)."""
    chunks = list(client.chat.completions.create(model=model, messages=user_messages("count"), stream=True,
                                                 **extra))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def continuations(gw):
    text = httpx.get(f"{gw.url}/metrics").text
    return {(s.labels["from_model"], s.labels["to_model"], s.labels["result"]): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "mana_llm_stream_continuations_total"}


def delta(before, after):
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


def in_flight(gw):
    providers = httpx.get(f"{gw.url}/v1/health").json()["providers"]
    return {name: state["in_flight"] for name, state in providers.items()}


def all_free(gw):
    return wait_for(lambda: all(count == 0 for count in in_flight(gw).values()), timeout=3)


# --- continued -------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"cut_after": 3}, {"stall_after": 3}, {"error_event_after": 3}],
                         ids=["cut", "stall", "error-event"])
def test_a_failure_after_the_first_token_is_continued_on_the_next_prefill_entry(gw, client, fake, fault):
    answer_on(fake, QWEN, **fault)
    answer_on(fake, CLAUDE)
    before = continuations(gw)
    text, chunks = stream_text(client, "mana/cont")
    assert text == ANSWER  # every word once, in order
    assert len({c.id for c in chunks}) == 1  # one stream
    models = [c.model for c in chunks]
    assert models[:3] == [QWEN] * 3 and set(models[3:]) == {CLAUDE}
    roles = [c.choices[0].delta.role for c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]  # the continuation's own role chunk is not repeated
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The continuing entry got the original request plus exactly the text already sent.
    sent = fake.stats()["last_request"][CLAUDE]["messages"]
    assert sent == [*user_messages("count"), {"role": "assistant", "content": "one two three "}]
    assert requests(fake, GROQ) == 0  # not marked prefill: passed over
    assert delta(before, continuations(gw)) == {(QWEN, CLAUDE, "continued"): 1}
    assert all_free(gw)


def test_the_failed_entry_itself_continues_when_marked(gw, client, fake):
    answer_on(fake, QWEN, cut_after=5)
    text, chunks = stream_text(client, "mana/self")
    assert text == ANSWER and {c.model for c in chunks} == {QWEN}
    assert requests(fake, QWEN) == 2 and requests(fake, GROQ) == 0
    assert fake.stats()["last_request"][QWEN]["messages"][-1] == {
        "role": "assistant", "content": "one two three four five "}


def test_raw_sse_same_id_and_model_names_the_continuing_entry(gw, fake):
    answer_on(fake, QWEN, cut_after=2)
    answer_on(fake, CLAUDE)
    response = httpx.post(f"{gw.url}/v1/chat/completions", json=chat("mana/cont", "count", stream=True), timeout=10)
    events = sse_events(response)  # OpenAI framing, one [DONE]
    assert response.headers["X-Mana-LLM-Resolved"] == QWEN
    assert not any("error" in event for event in events)
    assert len({event["id"] for event in events}) == 1
    assert len({event["created"] for event in events}) == 1
    assert [e["model"] for e in events if e["choices"][0]["delta"].get("content")] == [QWEN] * 2 + [CLAUDE] * 10


def test_usage_sums_the_parts(gw, client, fake):
    answer_on(fake, QWEN, error_event_after=4)
    answer_on(fake, CLAUDE)
    text, chunks = stream_text(client, "mana/cont", stream_options={"include_usage": True})
    assert text == ANSWER
    usages = [c.usage for c in chunks if c.usage]
    assert len(usages) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
    usage = usages[0]
    # The cut part reported none; the continuation's prompt holds the question and the prefill.
    assert usage.completion_tokens == len(ANSWER.split()) - 4
    assert usage.prompt_tokens == 1 + 4
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_two_failures_in_a_row_continue_twice(gw, client, fake):
    answer_on(fake, QWEN, cut_after=2)
    answer_on(fake, CLAUDE, cut_after=3)  # the continuation is cut too
    answer_on(fake, LLAMA)
    before = continuations(gw)
    text, chunks = stream_text(client, "mana/cont")
    assert text == ANSWER
    assert [c.model for c in chunks if c.choices and c.choices[0].delta.content] == \
        [QWEN] * 2 + [CLAUDE] * 3 + [LLAMA] * 7
    assert fake.stats()["last_request"][LLAMA]["messages"][-1]["content"] == "one two three four five "
    assert delta(before, continuations(gw)) == {(QWEN, CLAUDE, "continued"): 1, (CLAUDE, LLAMA, "continued"): 1}
    assert all_free(gw)


# --- ended with the original failure ------------------------------------------------------------


def error_of(client, model):
    """(text streamed before the error, the SDK's error) for a stream that ends in an error event."""
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=model, messages=user_messages("count"), stream=True):
            received.append(chunk)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert not any(c.choices and c.choices[0].finish_reason for c in received)  # never a clean end
    return text, caught.value


def test_a_third_failure_ends_with_its_error(gw, client, fake):
    answer_on(fake, QWEN, cut_after=2)
    answer_on(fake, CLAUDE, cut_after=3)
    answer_on(fake, LLAMA, error_event_after=2)
    before = continuations(gw)
    text, error = error_of(client, "mana/cont")
    assert text == "one two three four five six seven "
    assert LLAMA in error.message and "upstream exploded" in error.message
    assert delta(before, continuations(gw)) == {(QWEN, CLAUDE, "continued"): 1, (CLAUDE, LLAMA, "continued"): 1}
    assert all_free(gw)


def test_a_refused_prefill_ends_with_the_original_error(gw, client, fake):
    answer_on(fake, QWEN, cut_after=3)
    fake.fault("openrouter", "anthropic/claude-3-haiku", text=ANSWER, refuse_prefill=True)
    answer_on(fake, LLAMA)
    before = continuations(gw)
    text, error = error_of(client, "mana/cont")
    assert text == "one two three "
    assert QWEN in error.message and error.code == "protocol_error"  # the cut, not the 400
    assert "prefill" not in error.message
    assert requests(fake, CLAUDE) == 1 and requests(fake, LLAMA) == 0  # no fallback after a try
    assert delta(before, continuations(gw)) == {(QWEN, CLAUDE, "failed"): 1}
    assert all_free(gw)


def test_a_continuation_silent_past_its_first_token_timeout_ends_with_the_original_error(gw, client, fake):
    answer_on(fake, QWEN, error_event_after=2)
    answer_on(fake, CLAUDE, first_token_delay=3)  # its entry waits 1 s for a first token
    before = continuations(gw)
    text, error = error_of(client, "mana/cont")
    assert text == "one two " and QWEN in error.message and "upstream exploded" in error.message
    assert error.code != "first_token_timeout"
    assert requests(fake, LLAMA) == 0
    assert delta(before, continuations(gw)) == {(QWEN, CLAUDE, "failed"): 1}
    assert all_free(gw)


def test_no_prefill_entry_left_ends_with_the_original_error(gw, client, fake):
    # The prefill entry comes before the one that served: continuation only looks onward.
    fake.fault("openrouter", "anthropic/claude-3-haiku", times=1, status=500)
    answer_on(fake, QWEN, cut_after=4)
    before = continuations(gw)
    text, error = error_of(client, "mana/none-left")
    assert text == "one two three four " and QWEN in error.message and error.code == "protocol_error"
    assert requests(fake, CLAUDE) == 1 and requests(fake, GROQ) == 0
    assert delta(before, continuations(gw)) == {}
    assert all_free(gw)


def test_tool_call_streams_are_not_continued(gw, fake):
    fake.fault("ollama", "qwen2.5:7b", times=1, cut_after=1, tool_call=True)  # cut after the call
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    response = httpx.post(f"{gw.url}/v1/chat/completions", timeout=10,
                          json=chat("mana/cont", "weather in Paris?", stream=True, tools=tools))
    events = sse_events(response)
    assert events[0]["choices"][0]["delta"]["tool_calls"]
    assert events[-1]["error"]["code"] == "protocol_error"
    assert requests(fake, CLAUDE) == 0 and requests(fake, LLAMA) == 0


def test_several_choices_are_not_continued(gw, fake):
    answer_on(fake, QWEN, cut_after=3)
    answer_on(fake, CLAUDE)
    events = sse_events(httpx.post(f"{gw.url}/v1/chat/completions", timeout=10,
                                   json=chat("mana/cont", "count", stream=True, n=2)))
    assert events[-1]["error"]["code"] == "protocol_error"
    assert requests(fake, CLAUDE) == 0


def test_an_alias_without_the_option_ends_as_before(gw, client, fake):
    answer_on(fake, QWEN, cut_after=3)
    answer_on(fake, CLAUDE)
    before = continuations(gw)
    text, error = error_of(client, "mana/plain")
    assert text == "one two three " and error.code == "protocol_error"
    assert requests(fake, CLAUDE) == 0
    assert delta(before, continuations(gw)) == {}


# --- slots and upstreams ------------------------------------------------------------------------


def test_client_leaving_during_a_continuation_frees_every_slot_and_upstream(patient_gw, fake):
    gw = patient_gw
    answer_on(fake, QWEN, cut_after=2)
    answer_on(fake, CLAUDE, stall_after=1)  # one word, then silent until the client leaves
    with httpx.Client(base_url=gw.url, timeout=20) as http:
        with http.stream("POST", "/v1/chat/completions", json=chat("mana/cont", "count", stream=True)) as response:
            seen = ""
            # Held in a name: a generator dropped by ``break`` is closed at once, and
            # closing it closes the connection — the client would leave before the check.
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: ") and CLAUDE in line:
                    seen = json.loads(line[6:])["choices"][0]["delta"]["content"]
                    if seen:
                        break
            assert seen == "three "
            assert fake.stats()["active"] == 1  # the continuation is still streaming
        closed = time.monotonic()
    assert wait_for(lambda: fake.stats()["active"] == 0, timeout=1.5)
    assert time.monotonic() - closed < 1.5
    assert all_free(gw)


# --- in process: which entry may continue, and usage -------------------------------------------
# The router on real adapters over loopback, with its own breaker board on a fake clock.


class Board(BreakerBoard):
    """A breaker board that keeps its state in memory only."""

    def _schedule(self, fn, *args):
        pass


class Scripted(Provider):
    """A provider whose stream is the given chunks, then ``error`` (shapes the fake never sends)."""

    def __init__(self, name, chunks, error=None):
        super().__init__(name)
        self.chunks, self.error = chunks, error

    async def chat_stream(self, model, body):
        for chunk in self.chunks:
            yield json.loads(json.dumps(chunk))
        if self.error:
            raise self.error


def in_process_router(fake, chain, **adapters):
    table = AliasTable()
    table.snapshot = Snapshot(1, {"mana/c": AliasView("mana/c", "", tuple(chain), True)}, "mana/c")
    board = Board(clock=FakeClock(), log_transitions=False)
    adapters = {"ollama": OllamaProvider("ollama", base_url=fake.url, timeout=5, connect_timeout=1),
                "groq": OpenAICompatProvider("groq", base_url=f"{fake.url}/groq/v1", api_key="k", timeout=5,
                                             connect_timeout=1, max_concurrent=1),
                **adapters}

    class Providers:
        get = staticmethod(adapters.get)

    async def no_sleep(seconds):
        pass

    return Router(aliases=table, providers=Providers, breakers=board, sleep=no_sleep), adapters


def stream_body(**extra):
    return chat("mana/c", "count", stream=True, **extra)


@pytest.fixture
async def close_adapters():
    opened = []
    yield opened
    for adapters in opened:
        for adapter in adapters.values():
            await adapter.aclose()


async def test_open_breakers_and_saturated_providers_are_passed_over_half_open_ones_tried(
        fake, settings, close_adapters):
    settings.BREAKER_FAILURE_THRESHOLD = 1
    settings.STREAM_IDLE_TIMEOUT = 5
    chain = [Entry("ollama", "m1"), Entry("groq", "m2", prefill=True), Entry("ollama", "m3", prefill=True),
             Entry("groq", "m4", prefill=True)]
    router, adapters = in_process_router(fake, chain)
    close_adapters.append(adapters)
    board = router.breakers
    for model in ("m2", "m3", "m4"):
        fake.fault("ollama" if model == "m3" else "groq", model, text=ANSWER)
    board.record_failure("groq", "m2", "deployment", "down")  # open: passed over
    fake.fault("ollama", "m1", times=1, text=ANSWER, cut_after=2)
    events = await collect((await router.chat_stream(stream_body())).value)
    assert text_of(events) == ANSWER and events[-1]["model"] == "ollama/m3"
    assert requests(fake, "groq/m2") == 0
    assert board.status("ollama", "m1") == "unhealthy"  # the cut still counts on its own breaker
    assert {name: adapter.in_flight for name, adapter in adapters.items()} == {"ollama": 0, "groq": 0}

    # Half-open after the window: the continuation is the trial call, and its success closes it.
    board.clock.advance(settings.BREAKER_BACKOFF_SECONDS + 1)
    board.record_success("ollama", "m1")  # the cut opened it (threshold 1)
    assert board.status("groq", "m2") == "half_open"
    fake.fault("ollama", "m1", times=1, text=ANSWER, cut_after=2)
    events = await collect((await router.chat_stream(stream_body())).value)
    assert text_of(events) == ANSWER and events[-1]["model"] == "groq/m2"
    assert board.status("groq", "m2") == "healthy"

    # Groq at its cap of one (another stream holds it): saturated, passed over for ollama/m3.
    board.record_success("ollama", "m1")  # the cut opened it (threshold 1)
    held = await router.chat_stream(chat("groq/m4", stream=True))
    fake.fault("ollama", "m1", times=1, text=ANSWER, cut_after=2)
    events = await collect((await router.chat_stream(stream_body())).value)
    assert text_of(events) == ANSWER and events[-1]["model"] == "ollama/m3"
    await held.value.aclose()
    assert {name: adapter.in_flight for name, adapter in adapters.items()} == {"ollama": 0, "groq": 0}


async def test_usage_reported_by_the_failed_part_is_summed(fake, settings, close_adapters):
    settings.STREAM_IDLE_TIMEOUT = 5
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 1, "model": "x"}
    scripted = Scripted("scripted", [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "one "}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "two "}}], "usage": usage},
    ], errors.ProtocolError("reset"))
    router, adapters = in_process_router(fake, [Entry("scripted", "x"), Entry("groq", "m2", prefill=True)],
                                         scripted=scripted)
    close_adapters.append(adapters)
    fake.fault("groq", "m2", text=ANSWER)
    events = await collect((await router.chat_stream(stream_body(stream_options={"include_usage": True}))).value)
    assert text_of(events) == ANSWER
    final = events[-1]
    assert final["choices"] == [] and final["id"] == "chatcmpl-scripted" and final["model"] == "groq/m2"
    rest = len(ANSWER.split()) - 2
    assert final["usage"] == {"prompt_tokens": 3 + 1 + 2, "completion_tokens": 2 + rest,
                              "total_tokens": 3 + 1 + 2 + 2 + rest}

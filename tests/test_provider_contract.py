"""The adapter contract: one suite of transport faults and error answers, run against
every adapter (as Django's cache tests run one base class against every backend).

Each adapter talks to the in-repo fake upstream over real loopback HTTP; a subclass says
how to build it and how its answers differ (the chunks its streams yield before a fault).
What only one adapter does is tested beside it, in tests/test_provider_<adapter>.py.
"""
import asyncio
import json

import pytest

from providers import errors
from providers.google import GoogleProvider
from providers.ollama import OllamaProvider
from providers.openai_compat import OpenAICompatProvider
from tests.helpers import collect, eventually, text_of, unused_port, user

# One message per fault: how an error answer the fake sends is classified, on plain
# calls and on streams alike.
FAULTS = [
    ({"status": 500}, errors.UpstreamServerError),
    ({"status": 503}, errors.UpstreamServerError),
    ({"error_code": "rate_limit_exceeded"}, errors.RateLimited),
    ({"error_code": "invalid_api_key"}, errors.UpstreamAuthError),
    ({"error_code": "context_length_exceeded"}, errors.ContextLengthExceeded),
    ({"safety": True}, errors.Blocked),
    ({"status": 400}, errors.UpstreamRequestError),
    ({"reset": True}, errors.ProtocolError),
]


class AdapterContract:
    """What every adapter does with the same upstream faults. Subclasses set the class
    attributes and ``make``; the fixtures build the adapter against the fake."""

    route = None  # the fake's provider name in its stats keys
    model = None
    key = None
    models = None  # what list_models answers from the fake
    chunks_before_cut = 2  # chunks a stream yields before a cut after two content events
    chunks_before_error_event = 1  # ... before an error event after one content event
    finish_without_end_marker = False  # a finish_reason arrives even when the end marker does not

    def make(self, base_url, **options):
        raise NotImplementedError

    def base_url(self, fake):
        raise NotImplementedError

    def refused_url(self):
        return f"http://127.0.0.1:{unused_port()}"

    @pytest.fixture
    async def provider(self, fake):
        provider = self.make(self.base_url(fake))
        yield provider
        await provider.aclose()

    @pytest.fixture
    async def dead(self):
        provider = self.make(self.refused_url(), timeout=1)
        yield provider
        await provider.aclose()

    def assert_no_key(self, error):
        if self.key:
            for text in (str(error), repr(error), error.message, json.dumps(error.body())):
                assert self.key not in text

    async def fails(self, cls, awaitable):
        with pytest.raises(cls) as info:
            await awaitable
        self.assert_no_key(info.value)
        return info.value

    async def stream_fails(self, cls, iterator):
        chunks = []
        with pytest.raises(cls) as info:
            async for chunk in iterator:
                chunks.append(chunk)
        self.assert_no_key(info.value)
        return info.value, chunks

    # --- the upstream cannot be reached or does not answer --------------------------------

    async def test_refused_is_connect_error(self, dead):
        error = await self.fails(errors.ConnectError, dead.chat(self.model, user("x")))
        assert error.breaker == "provider" and error.action == errors.FALLOVER
        await self.stream_fails(errors.ConnectError, dead.chat_stream(self.model, user("x")))
        await self.fails(errors.ConnectError, dead.probe())
        await self.fails(errors.ConnectError, dead.list_models())

    async def test_hang_is_timeout(self, fake):
        provider = self.make(self.base_url(fake), timeout=0.3)
        fake.fault(self.route, self.model, times=1, hang=True)
        try:
            await self.fails(errors.Timeout, provider.chat(self.model, user("x")))
        finally:
            await provider.aclose()

    async def test_reset_before_answer_is_protocol_error(self, provider, fake):
        fake.fault(self.route, self.model, times=2, reset=True)
        await self.fails(errors.ProtocolError, provider.chat(self.model, user("x")))
        await self.stream_fails(errors.ProtocolError, provider.chat_stream(self.model, user("x")))

    # --- error answers ----------------------------------------------------------------------

    @pytest.mark.parametrize("fault, cls", FAULTS)
    async def test_fault_mapping(self, provider, fake, fault, cls):
        fake.fault(self.route, self.model, times=2, **fault)
        await self.fails(cls, provider.chat(self.model, user("x")))
        await self.stream_fails(cls, provider.chat_stream(self.model, user("x")))

    @pytest.mark.parametrize("status", [500, 503])
    async def test_5xx_is_retried_server_error(self, provider, fake, status):
        fake.fault(self.route, self.model, times=1, status=status)
        error = await self.fails(errors.UpstreamServerError, provider.chat(self.model, user("x")))
        assert error.reason == f"http_{status}" and error.action == errors.RETRY

    async def test_429_carries_retry_after(self, provider, fake):
        fake.fault(self.route, self.model, times=1, status=429, headers={"Retry-After": "3"})
        error = await self.fails(errors.RateLimited, provider.chat(self.model, user("x")))
        assert error.retry_after == 3.0

    async def test_auth_error_propagates_without_key(self, provider, fake):
        fake.fault(self.route, self.model, times=1, error_code="invalid_api_key")
        error = await self.fails(errors.UpstreamAuthError, provider.chat(self.model, user("x")))
        assert error.action == errors.PROPAGATE and error.breaker is None

    async def test_unknown_model_is_404_request_error(self, provider, fake):
        fake.fault(self.route, self.model, times=1, error_code="model_not_found")
        error = await self.fails(errors.UpstreamRequestError, provider.chat(self.model, user("x")))
        assert error.status == 404

    async def test_probe_failures(self, provider, fake):
        fake.fault(self.route, "*", times=1, status=503)
        await self.fails(errors.UpstreamServerError, provider.probe())

    # --- streams ------------------------------------------------------------------------------

    async def test_stream_http_error_raised_from_first_anext(self, provider, fake):
        fake.fault(self.route, self.model, times=1, status=503)
        stream = provider.chat_stream(self.model, user("x"))
        with pytest.raises(errors.UpstreamServerError) as info:
            await stream.__anext__()
        assert info.value.reason == "http_503" and info.value.upstream_status == 503

    async def test_stream_cut_mid_way_is_protocol_error(self, provider, fake):
        fake.fault(self.route, self.model, times=1, cut_after=2)
        _, chunks = await self.stream_fails(errors.ProtocolError,
                                            provider.chat_stream(self.model, user("one two three four five")))
        assert len(chunks) == self.chunks_before_cut
        assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)

    async def test_stream_error_event_mid_way(self, provider, fake):
        fake.fault(self.route, self.model, times=1, error_event_after=1)
        error, chunks = await self.stream_fails(errors.UpstreamServerError,
                                                provider.chat_stream(self.model, user("one two three")))
        assert len(chunks) == self.chunks_before_error_event and "upstream exploded" in error.message

    async def test_stream_skips_malformed_event(self, provider, fake, caplog):
        fake.fault(self.route, self.model, times=1, malformed_after=1)
        chunks = await collect(provider.chat_stream(self.model, user("a b c")))
        assert text_of(chunks) == f"Hello from {self.route}/{self.model}: a b c"
        assert "malformed" in caplog.text
        assert chunks[-1]["usage"]["completion_tokens"] > 0

    async def test_stream_without_end_marker_just_ends(self, provider, fake):
        fake.fault(self.route, self.model, times=1, no_done=True)
        chunks = await collect(provider.chat_stream(self.model, user("bye")))
        assert text_of(chunks) == f"Hello from {self.route}/{self.model}: bye"
        finished = any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)
        assert finished == self.finish_without_end_marker

    def http_client(self, provider):
        """The pooled httpx client the adapter sends through."""
        return provider.client

    async def test_closing_a_stream_early_cancels_upstream(self, provider, fake):
        # The upstream responses are kept referenced here: the adapter must close its
        # response itself, not leave it to whenever the garbage collector frees it.
        kept = []

        async def keep(response):
            kept.append(response)

        self.http_client(provider).event_hooks["response"].append(keep)
        fake.fault(self.route, self.model, times=1, stall_after=1)
        stream = provider.chat_stream(self.model, user("one two three"))
        assert (await stream.__anext__())["choices"][0]["delta"]["role"] == "assistant"
        await stream.aclose()
        assert kept and all(response.is_closed for response in kept)
        assert await eventually(lambda: fake.stats()["disconnects"] >= 1)
        assert fake.stats()["active"] == 0

    async def test_cancelling_a_stream_consumer_cancels_upstream(self, provider, fake):
        fake.fault(self.route, self.model, times=1, stall_after=1)
        got_one = asyncio.Event()

        async def consume():
            async for _ in provider.chat_stream(self.model, user("one two three")):
                got_one.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_one.wait(), 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await eventually(lambda: fake.stats()["disconnects"] >= 1)

    # --- models and probe ---------------------------------------------------------------------

    async def test_list_models_and_probe(self, provider):
        assert await provider.list_models() == self.models
        assert await provider.probe() is None

    async def test_key_not_in_repr(self, provider):
        assert self.key is None or self.key not in repr(provider)


class TestOllama(AdapterContract):
    route = "ollama"
    model = "qwen2.5:7b"
    models = ["qwen2.5:7b", "gemma3:12b", "llava:7b", "llama3.1:8b", "nomic-embed-text"]

    def make(self, base_url, **options):
        return OllamaProvider("ollama", base_url=base_url, **{"timeout": 5, "connect_timeout": 1, **options})

    def base_url(self, fake):
        return fake.url


class TestOpenAICompatible(AdapterContract):
    route = "groq"
    model = "llama-3.1-8b-instant"
    key = "sk-fake"
    models = ["llama-3.1-8b-instant", "llama-3.3-70b-versatile"]
    chunks_before_cut = 3  # the role chunk, then two content chunks
    chunks_before_error_event = 2
    finish_without_end_marker = True  # it is in a chunk before [DONE]

    def make(self, base_url, **options):
        return OpenAICompatProvider("groq", base_url=base_url, api_key=self.key,
                                    **{"timeout": 5, "connect_timeout": 1, **options})

    def base_url(self, fake):
        return f"{fake.url}/groq/v1"

    def refused_url(self):
        return f"{super().refused_url()}/v1"


class TestGoogle(AdapterContract):
    route = "google"
    model = "gemini-2.5-flash"
    key = "test-key-AIzaSyNeverLeakMe0123456789"

    @property
    def models(self):
        from fixtures.fake_upstream import GOOGLE_MODELS

        return GOOGLE_MODELS

    def http_client(self, provider):
        return provider._clients.get().http

    def make(self, base_url, **options):
        return GoogleProvider("google", base_url=base_url, api_key=self.key, default_model=self.model,
                              **{"timeout": 5, "connect_timeout": 1, **options})

    def base_url(self, fake):
        return fake.url + "/google"

    def refused_url(self):
        return f"{super().refused_url()}/google"

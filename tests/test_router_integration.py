"""The router on its defaults: providers built by providers.registry from
settings.PROVIDERS (pointed at the fake upstream), aliases from routing.table.registry,
breakers on the process board with real persistence to the database."""
import pytest

from health.models import Breaker as Row
from health.board import breakers
from providers import registry as provider_registry
from providers.ollama import OllamaProvider
from providers.openai_compat import OpenAICompatProvider
from routing import router as router_module
from routing.table import AliasView, Entry, Snapshot
from routing.table import aliases as alias_registry
from routing.router import NoHealthyProvider, Router
from tests.helpers import chat, collect


def provider_settings(fake):
    return {
        "ollama": {"kind": "ollama", "base_url": fake.url, "api_key": None, "max_concurrent": None, "timeout": 5},
        "groq": {"kind": "openai", "base_url": f"{fake.url}/groq/v1", "api_key": "test-groq-key",
                 "max_concurrent": 2, "timeout": 5},
    }


@pytest.fixture
async def defaults(fake, settings, monkeypatch):
    settings.PROVIDERS = provider_settings(fake)  # setting_changed resets providers.registry
    settings.CONNECT_TIMEOUT = 1
    settings.RETRIES = 1
    settings.FIRST_TOKEN_TIMEOUT = 5
    settings.BREAKER_FAILURE_THRESHOLD = 2
    settings.BREAKER_BACKOFF_SECONDS = 60
    chain = (Entry("ollama", "m1"), Entry("groq", "m2"))
    monkeypatch.setattr(alias_registry, "snapshot", Snapshot(7, {"mana/t": AliasView("mana/t", "", chain)}, "mana/t"))
    breakers.clear()
    yield fake
    await breakers.flush()
    breakers.clear()
    await provider_registry.aclose_all()


@pytest.mark.django_db(transaction=True)
async def test_happy_path_on_the_defaults(defaults):
    router = router_module.router
    served = await router.chat(chat("mana/t"))
    assert served.headers() == {"X-Mana-LLM-Resolved": "ollama/m1"}
    assert served.value["choices"][0]["message"]["content"] == "Hello from ollama/m1: hi"
    ollama = provider_registry.get("ollama")
    assert isinstance(ollama, OllamaProvider) and ollama.base_url == defaults.url
    assert ollama.connect_timeout == 1 and ollama.in_flight == 0
    groq = provider_registry.get("groq")
    assert isinstance(groq, OpenAICompatProvider) and groq.max_concurrent == 2
    # Default model (no "model"): the default alias; a stream works the same way.
    served = await router.chat_stream(chat(None, stream=True))
    chunks = await collect(served.value)
    assert served.target == "ollama/m1" and all(c["model"] == "ollama/m1" for c in chunks)
    assert ollama.in_flight == 0
    await breakers.flush()
    assert await Row.objects.acount() == 0  # nothing failed: nothing written


@pytest.mark.django_db(transaction=True)
async def test_fallback_on_the_defaults_persists_the_breaker(defaults):
    defaults.fault("ollama", "m1", status=500)
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)

    router = Router(sleep=sleep, jitter=lambda a, b: 1.0)
    served = await router.chat(chat("mana/t"))
    assert served.headers() == {"X-Mana-LLM-Resolved": "groq/m2", "X-Mana-LLM-Attempts": "ollama/m1=http_500"}
    assert sleeps == [0.5]
    assert breakers.status("ollama", "m1") == "unhealthy"
    await breakers.flush()
    row = await Row.objects.aget(key="ollama/m1")
    assert row.consecutive_failures == 2 and row.unhealthy_until is not None

    served = await router.chat(chat("mana/t"))
    assert served.headers()["X-Mana-LLM-Attempts"] == "ollama/m1=cache-unhealthy"
    assert defaults.stats()["requests"]["ollama/m1"] == 2


@pytest.mark.django_db(transaction=True)
async def test_changed_provider_settings_take_effect(defaults, settings):
    router = router_module.router
    assert (await router.chat(chat("mana/t"))).target == "ollama/m1"
    first = provider_registry.get("ollama")
    settings.PROVIDERS = {"groq": provider_settings(defaults)["groq"]}
    await first.aclose()
    served = await router.chat(chat("mana/t"))
    assert served.headers() == {"X-Mana-LLM-Resolved": "groq/m2", "X-Mana-LLM-Attempts": "ollama/m1=unconfigured"}
    with pytest.raises(NoHealthyProvider):
        await router.chat(chat("ollama/m1"))

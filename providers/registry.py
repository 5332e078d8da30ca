"""The configured providers: one adapter (and one pooled HTTP client) per provider.

Built lazily from ``settings.PROVIDERS`` on first use, inside the serving event loop,
because an httpx.AsyncClient belongs to the loop that first uses it.
"""
from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from .base import Provider

ADAPTERS = {
    "ollama": "providers.ollama.OllamaProvider",
    "openai": "providers.openai_compat.OpenAICompatProvider",
    "google": "providers.google.GoogleProvider",
}

_providers: dict[str, Provider] | None = None


def configured() -> dict[str, Provider]:
    """name -> Provider for every provider configured in the environment."""
    global _providers
    if _providers is None:
        _providers = {name: build(name, config) for name, config in settings.PROVIDERS.items()}
    return _providers


def get(name: str) -> Provider | None:
    return configured().get(name)


def build(name: str, config: dict) -> Provider:
    config = dict(config)
    adapter = import_string(ADAPTERS[config.pop("kind")])
    return adapter(name, connect_timeout=settings.CONNECT_TIMEOUT, **config)


async def aclose_all() -> None:
    global _providers
    providers, _providers = _providers, None
    for provider in (providers or {}).values():
        await provider.aclose()


def reset() -> None:
    """Forget the adapters (tests changing settings, or a new event loop)."""
    global _providers
    _providers = None

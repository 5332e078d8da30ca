"""GET /v1/models: every alias plus what the providers list (best effort, cached)."""
import asyncio
import logging
import time

from django.conf import settings

from providers import registry as providers

from .table import aliases

logger = logging.getLogger("manallm.routing")
LIST_TIMEOUT = 3.0

_cache = {}  # provider name -> (fetched at, [model ids])


def model_object(model_id: str, owned_by: str, created: int = 0) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


async def _provider_models(name: str, provider) -> list[str]:
    cached = _cache.get(name)
    if cached and time.monotonic() - cached[0] < settings.MODELS_CACHE_SECONDS:
        return cached[1]
    try:
        async with asyncio.timeout(LIST_TIMEOUT):
            models = await provider.list_models()
    except Exception as exc:
        # One broken provider never fails the list: serve what we had, if anything.
        logger.warning("could not list %s models: %s", name, getattr(exc, "message", exc))
        return cached[1] if cached else []
    _cache[name] = (time.monotonic(), list(models))
    return _cache[name][1]


async def all_models() -> list[dict]:
    objects = [model_object(name, "manallm") for name in sorted(aliases.snapshot.aliases)]
    configured = providers.configured()
    lists = await asyncio.gather(*(_provider_models(name, p) for name, p in configured.items()))
    for name, models in zip(configured, lists):
        objects.extend(model_object(f"{name}/{model}", name) for model in models)
    return objects


async def find(model_id: str) -> dict | None:
    """One model object by id (alias, provider/model, or a bare Ollama name), or None."""
    if model_id in aliases.snapshot.aliases:
        return model_object(model_id, "manallm")
    provider_name, slash, model = model_id.partition("/")
    if not slash:
        provider_name, model = "ollama", model_id
    provider = providers.get(provider_name)
    if provider is None:
        return None
    if model in await _provider_models(provider_name, provider):
        return model_object(f"{provider_name}/{model}", provider_name)
    return None


def clear() -> None:
    _cache.clear()

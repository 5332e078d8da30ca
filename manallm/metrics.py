"""The gateway's own Prometheus metrics (README#metrics), beside django-prometheus's.

With PROMETHEUS_MULTIPROC_DIR set (``make run`` sets it), prometheus_client writes to
shared files and /metrics aggregates every worker process.
"""
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

llm_requests = Counter("mana_llm_llm_requests_total", "Chat and embeddings requests, by requested model.",
                       ["provider", "model", "streaming"])
llm_errors = Counter("mana_llm_llm_errors_total", "Failed upstream attempts and refused requests.",
                     ["provider", "model", "error_type"])
tokens = Counter("mana_llm_tokens_total", "Tokens reported by the serving provider.", ["provider", "model", "type"])
latency = Histogram("mana_llm_llm_latency_seconds", "Upstream time of served requests.", ["provider", "model"],
                    buckets=LATENCY_BUCKETS)
time_to_first_token = Histogram("mana_llm_time_to_first_token_seconds", "Time to the first streamed token.",
                                ["provider", "model"], buckets=LATENCY_BUCKETS)
alias_resolved = Counter("mana_llm_alias_resolved_total", "Alias requests by the entry that served them.",
                         ["alias", "target"])
fallbacks = Counter("mana_llm_fallback_total", "Chain entries skipped or fallen over.",
                    ["from_model", "to_model", "reason"])
provider_healthy = Gauge("mana_llm_provider_healthy", "1 while the provider's breaker is closed.", ["provider"],
                         multiprocess_mode="livemostrecent")
deployment_healthy = Gauge("mana_llm_deployment_healthy", "1 while the deployment's breaker is closed.",
                           ["provider", "model"], multiprocess_mode="livemostrecent")
retries = Counter("mana_llm_retries_total", "Extra attempts on the same entry.", ["provider", "model", "reason"])
stream_continuations = Counter("mana_llm_stream_continuations_total",
                               "Tries to continue a stream that failed after its first token.",
                               ["from_model", "to_model", "result"])

# Consumers (README#consumers): ``consumer`` is the consumer's name, never a key.
consumer_requests = Counter("mana_llm_consumer_requests_total", "Requests by consumer and requested model.",
                            ["consumer", "alias", "status"])
consumer_tokens = Counter("mana_llm_consumer_tokens_total", "Tokens charged to a consumer.", ["consumer", "type"])
rate_limited = Counter("mana_llm_rate_limited_total", "Requests refused by a consumer's limit.", ["consumer", "limit"])
# The response cache (README#response-cache).
cache_requests = Counter("mana_llm_cache_requests_total", "Requests to a caching alias, by cache result.",
                         ["alias", "result"])


_children: dict[tuple, Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once per label set: ``labels()`` stringifies,
    locks and hashes on every call, and the hot path asks for the same few every request."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def on_breaker_transition(transition: Any) -> None:
    """Breaker listener: the health gauges mirror every breaker (1 only when closed)."""
    healthy = 1 if transition.new_status == "healthy" else 0
    if transition.model:
        deployment_healthy.labels(transition.provider, transition.model).set(healthy)
    else:
        provider_healthy.labels(transition.provider).set(healthy)


def install(breakers: Any, provider_names: Iterable[str]) -> None:
    """Subscribe the gauges to breaker transitions and set them from the current state.

    ``breakers`` is health's board (passed in, so this core module imports no app).
    """
    breakers.remove_listener(on_breaker_transition)
    breakers.add_listener(on_breaker_transition)
    for name in provider_names:
        provider_healthy.labels(name).set(1 if breakers.status(name) == "healthy" else 0)
    for provider, entry in breakers.snapshot().items():
        for model, state in entry.get("models", {}).items():
            deployment_healthy.labels(provider, model).set(1 if state["status"] == "healthy" else 0)

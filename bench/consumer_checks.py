"""What a consumer's limit checks and usage bookkeeping cost per request (README#consumers).

    .venv/bin/python bench/consumer_checks.py [--redis redis://127.0.0.1:6379/0 | --redis-server] [-n 20000]

In one process, no server: the admission (``limiter.admit``) and the end of a request
(its ``on_end`` hook and the usage listener), measured in CPU time (``time.process_time``)
per request, for a built-in consumer and for one with every limit set; and the whole of
what a consumer's request pays before and after the router: its key checked
(``directory.identify``), its scope, its limits, its usage. With ``--redis`` (or
``--redis-server``: a redis-server of its own on a free port, as ``make bench`` runs it)
the same through a real Redis, and the round trips per request counted by Redis itself
(INFO commandstats: EVALSHA/EVAL calls).
"""
import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "manallm.settings")

import django  # noqa: E402

django.setup()

from consumers import scope  # noqa: E402
from consumers.keys import directory  # noqa: E402
from consumers.limits import Limiter  # noqa: E402
from consumers.table import ConsumerView, KeyView, Snapshot, consumers, key_hash  # noqa: E402
from consumers.usage import UsageBook  # noqa: E402
from manallm.exchange import Exchange  # noqa: E402

LIMITS = {"rpm": 10**9, "tpm": 10**12, "max_concurrent": 10**6, "token_budget": 10**15, "budget_period": "month"}


async def per_request(limiter: Limiter, usage: UsageBook, consumer: str, count: int, key: str | None = None) -> float:
    """CPU microseconds per request: admission, then the end (slot, tokens, usage sums);
    with ``key``, also what comes first: the key looked up and the consumer's scope."""
    started = time.process_time()
    for _ in range(count):
        if key is not None:
            consumer = directory.identify(key)
            scope.check(consumer, "mana/fast-text")
        exchange = Exchange("bench", consumer, "chat", requested="mana/fast-text")
        await limiter.admit(exchange)
        exchange.target, exchange.prompt_tokens, exchange.completion_tokens = "groq/x", 20, 10
        for hook in exchange.on_end:
            hook(exchange)
        usage.record(exchange)
    if limiter.tasks:
        await asyncio.gather(*list(limiter.tasks))
    return (time.process_time() - started) / count * 1e6


async def admission_only(limiter: Limiter, consumer: str, count: int) -> float:
    """CPU microseconds of ``admit`` alone (the slots it takes are given back outside the timing)."""
    exchanges = [Exchange("bench", consumer, "chat", requested="mana/fast-text") for _ in range(count)]
    started = time.process_time()
    for exchange in exchanges:
        await limiter.admit(exchange)
    elapsed = time.process_time() - started
    for exchange in exchanges:
        for hook in exchange.on_end:
            hook(exchange)
    return elapsed / count * 1e6


KEY = "mk-" + "b" * 40


def redis_server():
    """A redis-server of this run's own on a free loopback port (None when not installed)."""
    import shutil
    import subprocess

    from tests.helpers import free_port, redis_up

    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not redis_up(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


async def script_calls(redis_url: str) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    stats = await client.info("commandstats")
    await client.aclose()
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", help="a Redis URL: also measure the shared counting")
    parser.add_argument("--redis-server", action="store_true", help="start a redis-server of its own for that")
    parser.add_argument("-n", type=int, default=20000)
    args = parser.parse_args()
    consumers.snapshot = Snapshot(1, {"team": ConsumerView("team", allowed_models=("mana/*",), **LIMITS)},
                                  {key_hash(KEY): KeyView("team", KEY[3:11])})
    server = None
    if args.redis_server and not args.redis:
        server, args.redis = redis_server()
    try:
        await report(args)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)


async def report(args) -> None:
    usage = UsageBook()
    local = Limiter(usage=usage)
    await per_request(local, usage, "team", 1000)  # warm up
    print(f"admission, built-in consumer (env):      {await admission_only(local, 'env', args.n):6.2f} µs CPU")
    print(f"admission, every limit, this process:    {await admission_only(local, 'team', args.n):6.2f} µs CPU")
    print(f"whole request, built-in consumer (env):  {await per_request(local, usage, 'env', args.n):6.2f} µs CPU "
          "(admission, end hook, usage sums and metrics)")
    print(f"whole request, every limit, this process:{await per_request(local, usage, 'team', args.n):6.2f} µs CPU")
    print(f"consumer key + scope + every limit + usage, this process: "
          f"{await per_request(local, usage, 'team', args.n, key=KEY):6.2f} µs CPU (target <= 50)")
    if args.redis:
        shared = Limiter(usage=usage, redis_url=args.redis)
        await per_request(shared, usage, "team", 100)
        before = await script_calls(args.redis)
        count = max(1000, args.n // 10)
        cpu = await per_request(shared, usage, "team", count)
        calls = await script_calls(args.redis) - before
        print(f"whole request, every limit, via Redis:   {cpu:6.2f} µs CPU, "
              f"{calls / count:.2f} Redis calls per request (1 admission + 1 at the end, not awaited)")
        print(f"consumer key + scope + every limit + usage, via Redis: "
              f"{await per_request(shared, usage, 'team', count, key=KEY):6.2f} µs CPU")


if __name__ == "__main__":
    asyncio.run(main())

"""Which Redis client the response cache reads with (routing/cache_backends.py).

Starts a redis-server and, in one asyncio loop as the gateway has, times a cache read
of a 2 KiB answer through Django's cache framework (``django.core.cache``'s built-in
``RedisCache``, its async ``aget``) and through redis-py's asyncio client directly:
sequential reads (p50 latency) and 32 concurrent ones, with the process's CPU per read.
Run: ``.venv/bin/python bench/cache_redis_choice.py``.
"""
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port, redis_up  # noqa: E402

VALUE = b"x" * 2048


async def measure(name, get, count):
    latencies = []
    cpu = time.process_time()
    for _ in range(count):
        started = time.perf_counter()
        assert await get() is not None
        latencies.append(time.perf_counter() - started)
    sequential_cpu = (time.process_time() - cpu) / count
    cpu, started = time.process_time(), time.perf_counter()
    for _ in range(count // 32):
        await asyncio.gather(*(get() for _ in range(32)))
    concurrent = (time.perf_counter() - started) / (count // 32 * 32)
    concurrent_cpu = (time.process_time() - cpu) / (count // 32 * 32)
    print(f"| {name} | {statistics.median(latencies) * 1e6:.0f} | {sequential_cpu * 1e6:.0f} | "
          f"{concurrent * 1e6:.0f} | {concurrent_cpu * 1e6:.0f} |")


async def main(url, count):
    import django
    from django.conf import settings

    settings.configure(CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                           "LOCATION": url}})
    django.setup()
    from django.core.cache import cache as django_cache
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    await client.set("bench", VALUE)
    await django_cache.aset("bench", VALUE)
    print("| client | sequential p50 µs | CPU µs/read | 32 concurrent: µs/read | CPU µs/read |")
    print("|---|---|---|---|---|")
    for _ in range(2):  # the second pass is the one to read: pools and threads warm
        await measure("redis-py asyncio `get`", lambda: client.get("bench"), count)
        await measure("django.core.cache RedisCache `aget`", lambda: django_cache.aget("bench"), count)
    await client.aclose()


if __name__ == "__main__":
    binary = shutil.which("redis-server") or sys.exit("redis-server is not installed")
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not redis_up(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        asyncio.run(main(f"redis://127.0.0.1:{port}/0", int(sys.argv[1]) if len(sys.argv) > 1 else 3200))
    finally:
        server.terminate()
        server.wait(10)

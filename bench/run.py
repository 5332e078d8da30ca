"""make bench: what manallm adds on top of calling the upstream directly.

Starts the fake upstream and one gateway process, then measures, interleaved in one
run, the same OpenAI requests sent straight to the fake upstream and through the
gateway: plain calls at concurrency 1, 8 and 32, streams (time to first token and
total), memory with 256 open streams, and the gateway's CPU time per request.
Numbers are from this machine, shared by client, gateway and fake upstream.
"""
import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port, redis_up  # noqa: E402

BODY = {"model": "mana/bench", "messages": [{"role": "user", "content": "Say hello in five words."}]}
STREAM_BODY = {**BODY, "stream": True}
ALIASES = "aliases:\n  mana/bench:\n    description: benchmark\n    chain: [openai/gpt-4o-mini]\ndefault: mana/bench\n"
ALIASES = ALIASES.replace("default:", "  mana/bench-cached:\n    cache_ttl: 3600\n    chain: [openai/gpt-4o-mini]\n"
                          "default:")  # the response cache


def start(cmd, env, ready_url, log):
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    import httpx

    while time.monotonic() < deadline:
        try:
            if httpx.get(ready_url, timeout=1).status_code < 500:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{cmd[2] if len(cmd) > 2 else cmd} did not start")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def plain_round(session, url, concurrency, count, latencies):
    queue = iter(range(count))

    async def worker():
        for _ in queue:
            started = time.perf_counter()
            async with session.post(url, json=BODY) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def stream_once(session, url):
    started = time.perf_counter()
    first = None
    async with session.post(url, json=STREAM_BODY) as response:
        assert response.status == 200, response.status
        async for line in response.content:
            if first is None and line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(direct, gateway, gateway_pid, rounds, per_round):
    results = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in (direct, gateway):  # warm up pools and caches
            await plain_round(session, url, 8, 200, [])
        gateway_cpu, gateway_requests = 0.0, 0
        for concurrency in (1, 8, 32):
            lat = {"direct": [], "gateway": []}
            rate = {"direct": [], "gateway": []}
            for _ in range(rounds):
                for name, url in (("direct", direct), ("gateway", gateway)):
                    before = cpu_seconds(gateway_pid)
                    rate[name].append(await plain_round(session, url, concurrency, per_round, lat[name]))
                    if name == "gateway":
                        gateway_cpu += cpu_seconds(gateway_pid) - before
                        gateway_requests += per_round
            results[concurrency] = {
                name: {"rps": statistics.median(rate[name]), "p50_ms": pct(lat[name], 0.5),
                       "p99_ms": pct(lat[name], 0.99)} for name in lat}
        stream = {"direct": [], "gateway": []}
        for _ in range(rounds * 20):
            for name, url in (("direct", direct), ("gateway", gateway)):
                stream[name].append(await stream_once(session, url))
        results["stream"] = {name: {"ttft_p50_ms": pct([s[0] for s in values], 0.5),
                                    "total_p50_ms": pct([s[1] for s in values], 0.5)}
                             for name, values in stream.items()}
        results["cpu_ms_per_request"] = gateway_cpu / gateway_requests * 1000
    return results


async def open_streams(gateway, fake, gateway_pid, count):
    """Peak gateway memory while `count` streams are open (each stalls after one token)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await session.post(f"{fake}/_faults", json={"upstream": "openai", "model": "gpt-4o-mini",
                                                     "fault": {"stall_after": 1}})
        baseline = rss_kib(gateway_pid)
        responses = []
        try:
            for _ in range(count):
                response = await session.post(gateway, json=STREAM_BODY)
                await response.content.readline()
                responses.append(response)
            peak = rss_kib(gateway_pid)
        finally:
            for response in responses:
                response.close()
            await session.delete(f"{fake}/_faults")
    return {"baseline_kib": baseline, "peak_kib": peak, "per_stream_kib": (peak - baseline) / count}


def report(results, memory):
    lines = ["", "manallm benchmark (one gateway process; client, gateway and fake upstream share this machine)", ""]
    lines.append("| concurrency | direct req/s | gateway req/s | ratio | added p50 ms | added p99 ms |")
    lines.append("|---|---|---|---|---|---|")
    for concurrency in (1, 8, 32):
        d, g = results[concurrency]["direct"], results[concurrency]["gateway"]
        lines.append(f"| {concurrency} | {d['rps']:.0f} | {g['rps']:.0f} | {g['rps'] / d['rps']:.2f} | "
                     f"{g['p50_ms'] - d['p50_ms']:.2f} | {g['p99_ms'] - d['p99_ms']:.2f} |")
    s = results["stream"]
    lines += ["", f"streams: time to first token p50 {s['direct']['ttft_p50_ms']:.2f} ms direct, "
                  f"{s['gateway']['ttft_p50_ms']:.2f} ms through the gateway; total p50 "
                  f"{s['direct']['total_p50_ms']:.2f} ms direct, {s['gateway']['total_p50_ms']:.2f} ms gateway",
              f"gateway CPU per plain request: {results['cpu_ms_per_request']:.3f} ms",
              f"memory with {memory['count']} open streams: {memory['per_stream_kib']:.1f} KiB per stream "
              f"(RSS {memory['baseline_kib'] / 1024:.1f} -> {memory['peak_kib'] / 1024:.1f} MiB)", ""]
    return "\n".join(lines)


# --- the response cache (README#response-cache) ------------------------------------------


async def cache_rows(direct, gateway, gateway_pid, rounds, per_round):
    """p50 latency and gateway CPU per request, interleaved at concurrency 1: the upstream
    directly, an alias without a cache, a miss (a new question each time), a hit."""
    cached = {**BODY, "model": "mana/bench-cached"}
    fresh = (f"miss {n} {time.time_ns()}" for n in range(10**9))
    rows = {name: {"latencies": [], "cpu": 0.0, "count": 0} for name in ("direct", "no cache", "miss", "hit")}
    async with aiohttp.ClientSession() as session:
        async def one(url, body, row):
            started = time.perf_counter()
            async with session.post(url, json=body) as response:
                await response.read()
                assert response.status == 200, response.status
            row["latencies"].append(time.perf_counter() - started)

        for _ in range(2):
            await one(gateway, cached, {"latencies": []})  # stored (Redis: written after the answer)
        for _ in range(rounds):
            for name, row in rows.items():
                before = cpu_seconds(gateway_pid)
                for _ in range(per_round):
                    body = {"no cache": BODY, "hit": cached, "direct": BODY}.get(name) or {
                        **cached, "messages": [{"role": "user", "content": next(fresh)}]}
                    await one(direct if name == "direct" else gateway, body, row)
                row["cpu"] += cpu_seconds(gateway_pid) - before
                row["count"] += per_round
    return {name: {"p50_ms": pct(row["latencies"], 0.5), "cpu_ms": row["cpu"] / row["count"] * 1000}
            for name, row in rows.items()}


def cache_bench(env, direct, gateway, gateway_pid, logs, rounds, per_round):
    """The cache rows for the in-process LRU (the main gateway) and for Redis (a second
    gateway on a redis-server of its own, when one is installed)."""
    import shutil

    results = {"in-process": asyncio.run(cache_rows(direct, gateway, gateway_pid, rounds, per_round))}
    redis_server = shutil.which("redis-server")
    if redis_server:
        redis_port, port = free_port(), free_port()
        processes = [subprocess.Popen([redis_server, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                                      stdout=logs, stderr=subprocess.STDOUT)]
        try:
            deadline = time.monotonic() + 10
            while not redis_up(redis_port) and time.monotonic() < deadline:
                time.sleep(0.05)
            redis_env = {**env, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
            processes.append(start([sys.executable, "-m", "daphne", "--verbosity", "0", "-b", "127.0.0.1", "-p",
                                    str(port), "manallm.asgi:application"], redis_env,
                                   f"http://127.0.0.1:{port}/health", logs))
            results["redis"] = asyncio.run(cache_rows(direct, f"http://127.0.0.1:{port}/v1/chat/completions",
                                                      processes[-1].pid, rounds, per_round))
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(10)
    lines = ["| cache backend | path | p50 ms | added p50 ms | gateway CPU ms/request |", "|---|---|---|---|---|"]
    for backend, rows in results.items():
        for name in ("no cache", "miss", "hit"):
            row = rows[name]
            lines.append(f"| {backend} | {name} | {row['p50_ms']:.2f} | {row['p50_ms'] - rows['direct']['p50_ms']:.2f} "
                         f"| {row['cpu_ms']:.3f} |")
        lines.append(f"| {backend} | miss / hit CPU | | | {rows['miss']['cpu_ms'] / rows['hit']['cpu_ms']:.1f}x |")
    return "\n".join(["", "response cache (concurrency 1; added p50: over the upstream called directly)", "",
                      *lines, ""]), results


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=400)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="manallm-bench-"))
    (work / "aliases.yaml").write_text(ALIASES)
    fake_port, gateway_port = free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}", "ALIASES_FILE": str(work / "aliases.yaml"),
           "OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": f"{fake}/openai/v1", "OLLAMA_URL": fake,
           "LOG_LEVEL": "warning"}
    logs = open(work / "processes.log", "wb")
    processes = []
    try:
        processes.append(start([sys.executable, "fixtures/fake_upstream.py", "--port", str(fake_port)], env,
                               f"{fake}/_faults", logs))
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        subprocess.run([sys.executable, "manage.py", "import_aliases", "-v0"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        daphne = [sys.executable, "-m", "daphne", "--verbosity", "0", "-b", "127.0.0.1", "-p", str(gateway_port),
                  "manallm.asgi:application"]
        gateway_process = start(daphne, env, f"http://127.0.0.1:{gateway_port}/health", logs)
        processes.append(gateway_process)
        direct = f"{fake}/openai/v1/chat/completions"
        gateway = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        results = asyncio.run(measure(direct, gateway, gateway_process.pid, args.rounds, args.per_round))
        memory = asyncio.run(open_streams(gateway, fake, gateway_process.pid, args.streams))
        memory["count"] = args.streams
        print(report(results, memory))
        cache_table, results["cache"] = cache_bench(env, direct, gateway, gateway_process.pid, logs,
                                                    args.rounds, max(1, args.per_round // 4))
        print(cache_table)
        if args.json:
            Path(args.json).write_text(json.dumps({"results": results, "memory": memory}, indent=2))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        logs.close()


if __name__ == "__main__":
    main()

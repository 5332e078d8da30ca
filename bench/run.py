"""make bench: what manallm adds on top of calling the upstream directly, and what the
stack underneath it costs by itself.

Starts the fake upstream, one gateway process and the floor (bench/floor.py on the same
daphne: a bare forwarding ASGI app on the gateway's HTTP client, and a constant answer),
then measures them in the same interleaved rounds: plain calls at concurrency 1, 8 and 32
(aiohttp), each process's CPU time per request, a sequential keep-alive client for the
tail at concurrency 1 (p50, p99, p99.9), streams through the gateway (time to first token
and total) and memory with 256 open streams; a second gateway with REQUEST_LOG=all shows
what a request-log row costs. Added latency is a target's percentile minus
the upstream's own. Numbers are from this machine, shared by client, servers and upstream.
"""
import argparse
import asyncio
import gc
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port, redis_up  # noqa: E402

BODY = {"model": "mana/bench", "messages": [{"role": "user", "content": "Say hello in five words."}]}
BODY_BYTES = json.dumps(BODY).encode()
STREAM_BODY = {**BODY, "stream": True}
CONCURRENCIES = (1, 8, 32)
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


@dataclass
class Target:
    """One thing measured: a URL answering BODY, and the process whose CPU is counted."""
    name: str
    url: str
    pid: int | None = None
    cpu_seconds: float = 0.0
    cpu_requests: int = 0
    plain: dict = field(default_factory=dict)  # concurrency -> {"rps", "p50_ms", "p99_ms"}
    sequential: list = field(default_factory=list)  # seconds per request, c=1 keep-alive

    @property
    def cpu_ms_per_request(self) -> float | None:
        return self.cpu_seconds / self.cpu_requests * 1000 if self.pid and self.cpu_requests else None


async def measure_plain(targets, rounds, per_round):
    """Plain calls at each concurrency, every target once per round (interleaved)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for target in targets:  # warm up pools and caches
            await plain_round(session, target.url, 8, 200, [])
        for concurrency in CONCURRENCIES:
            lat = {target.name: [] for target in targets}
            rate = {target.name: [] for target in targets}
            for _ in range(rounds):
                for target in targets:
                    before = cpu_seconds(target.pid) if target.pid else 0.0
                    rate[target.name].append(await plain_round(session, target.url, concurrency, per_round,
                                                               lat[target.name]))
                    if target.pid:
                        target.cpu_seconds += cpu_seconds(target.pid) - before
                        target.cpu_requests += per_round
            for target in targets:
                target.plain[concurrency] = {"rps": statistics.median(rate[target.name]),
                                             "p50_ms": pct(lat[target.name], 0.5),
                                             "p99_ms": pct(lat[target.name], 0.99)}


def sequential_round(connection, path, count, latencies):
    """``count`` requests one after the other on one keep-alive connection (http.client:
    no event loop on the client side, so its own stalls do not read as the server's)."""
    headers = {"Content-Type": "application/json"}
    for _ in range(count):
        started = time.perf_counter()
        connection.request("POST", path, BODY_BYTES, headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        assert response.status == 200, response.status


def measure_sequential(targets, rounds, per_round):
    """The tail at concurrency 1: every target once per round (interleaved), each on one
    connection kept for the whole run (no connection setup in the tail). The client's own
    garbage collector is off meanwhile, so a pause in the tail is a server's."""
    connections = []
    for target in targets:
        parts = urlsplit(target.url)
        connections.append((http.client.HTTPConnection(parts.hostname, parts.port, timeout=30), parts.path))
        sequential_round(*connections[-1], 100, [])  # warm up
    gc.disable()
    try:
        for _ in range(rounds):
            for target, (connection, path) in zip(targets, connections):
                sequential_round(connection, path, per_round, target.sequential)
    finally:
        gc.enable()
        for connection, _ in connections:
            connection.close()


async def measure_streams(direct, gateway, gateway_pid, count):
    """Time to first token and total of ``count`` streams each, interleaved, and the
    gateway's CPU per stream."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        stream = {"direct": [], "gateway": []}
        cpu = 0.0
        for _ in range(count):
            for name, url in (("direct", direct), ("gateway", gateway)):
                before = cpu_seconds(gateway_pid) if name == "gateway" else 0.0
                stream[name].append(await stream_once(session, url))
                if name == "gateway":
                    cpu += cpu_seconds(gateway_pid) - before
    results = {name: {"ttft_p50_ms": pct([s[0] for s in values], 0.5),
                      "total_p50_ms": pct([s[1] for s in values], 0.5)} for name, values in stream.items()}
    results["gateway"]["cpu_ms"] = cpu / count * 1000
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


def fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def summary(targets):
    """Per target: req/s, added latency (over the first target, the upstream), CPU."""
    direct = targets[0]
    rows = {}
    for target in targets:
        added = target is not direct
        rows[target.name] = {
            **{f"rps_c{c}": target.plain[c]["rps"] for c in CONCURRENCIES},
            "added_p50_c1": target.plain[1]["p50_ms"] - direct.plain[1]["p50_ms"] if added else None,
            "added_p99_c32": target.plain[32]["p99_ms"] - direct.plain[32]["p99_ms"] if added else None,
            "cpu_ms": target.cpu_ms_per_request,
            **{f"seq_{name}": (pct(target.sequential, q) - pct(direct.sequential, q)) if added else None
               for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))},
        }
    return rows


def report(targets, streams, memory, gateway="gateway", floor="floor"):
    rows = summary(targets)
    lines = ["", "manallm benchmark (one process each; client, servers and fake upstream share this machine)",
             f"added = the target's percentile minus the upstream's; sequential = "
             f"{len(targets[0].sequential)} keep-alive requests one at a time", ""]
    lines.append("| target | req/s c=1 | req/s c=8 | req/s c=32 | added p50 ms c=1 | added p99 ms c=32 "
                 "| CPU ms/request | sequential added p50 ms | p99 ms | p99.9 ms |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for target in targets:
        r = rows[target.name]
        lines.append(f"| {target.name} | {r['rps_c1']:.0f} | {r['rps_c8']:.0f} | {r['rps_c32']:.0f} | "
                     f"{fmt(r['added_p50_c1'])} | {fmt(r['added_p99_c32'])} | {fmt(r['cpu_ms'], 3)} | "
                     f"{fmt(r['seq_p50'])} | {fmt(r['seq_p99'])} | {fmt(r['seq_p999'])} |")
    if gateway in rows and floor in rows:
        g, f = rows[gateway], rows[floor]
        lines.append(f"| {gateway} / {floor} | {fmt(ratio(g['rps_c1'], f['rps_c1']))} | "
                     f"{fmt(ratio(g['rps_c8'], f['rps_c8']))} | {fmt(ratio(g['rps_c32'], f['rps_c32']))} | "
                     f"{fmt(ratio(g['added_p50_c1'], f['added_p50_c1']))} | "
                     f"{fmt(ratio(g['added_p99_c32'], f['added_p99_c32']))} | {fmt(ratio(g['cpu_ms'], f['cpu_ms']))} | "
                     f"{fmt(ratio(g['seq_p50'], f['seq_p50']))} | {fmt(ratio(g['seq_p99'], f['seq_p99']))} | "
                     f"{fmt(ratio(g['seq_p999'], f['seq_p999']))} |")
        lines += ["", f"against the targets (README#performance): CPU per request {fmt(ratio(g['cpu_ms'], f['cpu_ms']))}x "
                      f"the floor's (<= 1.5), req/s at c=32 {fmt(ratio(g['rps_c32'], f['rps_c32']))}x (>= 0.7), "
                      f"added p50 at c=1 {fmt(g['seq_p50'])} ms (<= 0.6), added p99.9 at c=1 {fmt(g['seq_p999'])} ms (<= 5)"]
    s = streams
    lines += ["", f"streams: time to first token p50 {s['direct']['ttft_p50_ms']:.2f} ms direct, "
                  f"{s['gateway']['ttft_p50_ms']:.2f} ms through the gateway; total p50 "
                  f"{s['direct']['total_p50_ms']:.2f} ms direct, {s['gateway']['total_p50_ms']:.2f} ms gateway; "
                  f"gateway CPU {s['gateway']['cpu_ms']:.2f} ms per stream",
              f"memory with {memory['count']} open streams: {memory['per_stream_kib']:.1f} KiB per stream "
              f"(RSS {memory['baseline_kib'] / 1024:.1f} -> {memory['peak_kib'] / 1024:.1f} MiB)", ""]
    return "\n".join(lines)


def start_daphne(application, port, env, ready_path, log):
    """One daphne process serving ``application`` on loopback (as the gateway is served)."""
    command = [sys.executable, "-m", "daphne", "--verbosity", "0", "-b", "127.0.0.1", "-p", str(port), application]
    return start(command, env, f"http://127.0.0.1:{port}{ready_path}", log)


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
    parser.add_argument("--sequential", type=int, default=1000, help="sequential requests per target and round")
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="manallm-bench-"))
    (work / "aliases.yaml").write_text(ALIASES)
    fake_port, gateway_port, floor_port = free_port(), free_port(), free_port()
    fake = f"http://127.0.0.1:{fake_port}"
    direct = f"{fake}/openai/v1/chat/completions"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}", "ALIASES_FILE": str(work / "aliases.yaml"),
           "OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": f"{fake}/openai/v1", "OLLAMA_URL": fake,
           "LOG_LEVEL": "warning", "FLOOR_UPSTREAM": direct}
    logs = open(work / "processes.log", "wb")
    processes = []
    try:
        fake_process = start([sys.executable, "fixtures/fake_upstream.py", "--port", str(fake_port)], env,
                             f"{fake}/_faults", logs)
        processes.append(fake_process)
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        subprocess.run([sys.executable, "manage.py", "import_aliases", "-v0"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        gateway_process = start_daphne("manallm.asgi:application", gateway_port, env, "/health", logs)
        processes.append(gateway_process)
        floor_process = start_daphne("bench.floor:application", floor_port, env, "/constant", logs)
        processes.append(floor_process)
        # The same gateway writing a request-log row for every request (README#request-log).
        logged_port = free_port()
        logged_process = start_daphne("manallm.asgi:application", logged_port, {**env, "REQUEST_LOG": "all"},
                                      "/health", logs)
        processes.append(logged_process)
        gateway = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        # The upstream first: every other row's added latency is measured against it.
        targets = [Target("upstream direct", direct),
                   Target("daphne constant", f"http://127.0.0.1:{floor_port}/constant", floor_process.pid),
                   Target("floor", f"http://127.0.0.1:{floor_port}/forward", floor_process.pid),
                   Target("gateway", gateway, gateway_process.pid),
                   Target("gateway, REQUEST_LOG=all", f"http://127.0.0.1:{logged_port}/v1/chat/completions",
                          logged_process.pid)]
        asyncio.run(measure_plain(targets, args.rounds, args.per_round))
        measure_sequential(targets, args.rounds, args.sequential)
        streams = asyncio.run(measure_streams(direct, gateway, gateway_process.pid, args.rounds * 40))
        memory = asyncio.run(open_streams(gateway, fake, gateway_process.pid, args.streams))
        memory["count"] = args.streams
        print(report(targets, streams, memory))
        cache_table, cache = cache_bench(env, direct, gateway, gateway_process.pid, logs,
                                                    args.rounds, max(1, args.per_round // 4))
        print(cache_table)
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary(targets), "streams": streams, "memory": memory,
                                                   "plain": {t.name: t.plain for t in targets}, "cache": cache},
                                                  indent=2))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        logs.close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Steering benchmarks: fairness and stall runs for least_loaded, hash and
shared_accept, in one run, through the real sluice binary on loopback.

fairness: 4 workers; 1,000 connections arrive in bursts of 50 every 200 ms,
          each held for a random 0.5-4 s. Active connections per worker are
          sampled from the pinned worker_load map every 100 ms.
stall:    4 workers; a client opens 200 connections/s for 4 s; one second in,
          worker 0 is blocked for 2 s (SIGUSR1 knob). Each connection's time
          from connect() to the backend's first byte is measured.

Prints markdown tables and writes raw JSON. Needs root (BPF) and bpftool.
"""
import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ["least_loaded", "hash", "shared_accept"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """Sends one byte on accept, then holds the connection until the client closes."""

    def __init__(self):
        self.port = None
        self.server = None

    async def start(self):
        async def handle(reader, writer):
            writer.write(b"!")
            try:
                await writer.drain()
                await reader.read()  # until EOF
            except (ConnectionError, OSError):
                pass
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]


class Sluice:
    def __init__(self, binary, mode, backend_port, workers=4, stall_threshold="200ms", stall_knob=None):
        self.port = free_port()
        self.instance = f"bench-{mode.replace('_', '-')}-{self.port}"
        config = f"""
instance: {self.instance}
workers: {workers}
steering: {mode}
data_path: splice
stall_threshold: {stall_threshold}
drain_timeout: 2s
log: {{ level: warning, access: off, file: stderr }}
listeners:
  - {{ name: bench, bind: "127.0.0.1:{self.port}", pool: p, idle_timeout: 60s }}
pools:
  - name: p
    algorithm: round_robin
    backends:
      - {{ address: "127.0.0.1:{backend_port}" }}
"""
        self.config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        self.config.write(config)
        self.config.close()
        args = [binary, "run", "-c", self.config.name]
        if stall_knob:
            args += ["--stall-on-sigusr1", stall_knob]
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("sluice did not start: " + open(self.log.name).read())
        time.sleep(0.3)  # the probe connection closes and leaves the counts

    def worker_load(self):
        out = subprocess.run(
            ["bpftool", "-j", "map", "dump", "pinned", f"/sys/fs/bpf/sluice/{self.instance}/worker_load"],
            capture_output=True, text=True, check=True).stdout
        return [e["formatted"]["value"] for e in json.loads(out)]

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.unlink(self.config.name)
        os.unlink(self.log.name)


async def hold(port, lifetime, opened):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readexactly(1)
        opened.append(1)
        await asyncio.sleep(lifetime)
        writer.close()
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass


async def fairness_run(binary, mode, backend, workers, seed):
    rng = random.Random(seed)
    sluice = Sluice(binary, mode, backend.port, workers=workers)
    samples = []
    opened = []
    stop_sampling = False

    async def sampler():
        while not stop_sampling:
            load = await asyncio.to_thread(sluice.worker_load)
            active = [w["active"] for w in load[:workers]]
            if sum(active) >= 8:  # only meaningful while there is load to spread
                samples.append(active)
            await asyncio.sleep(0.1)

    sampling = asyncio.create_task(sampler())
    tasks = []
    for _ in range(20):
        for _ in range(50):
            tasks.append(asyncio.create_task(hold(sluice.port, rng.uniform(0.5, 4.0), opened)))
        await asyncio.sleep(0.2)
    await asyncio.gather(*tasks)
    stop_sampling = True
    await sampling
    final = [w["active"] for w in sluice.worker_load()[:workers]]
    sluice.stop()
    spreads = [max(s) - min(s) for s in samples]
    ratios = [max(s) / min(s) for s in samples if min(s) > 0]
    stdevs = [statistics.pstdev(s) for s in samples]
    peak = max(samples, key=sum) if samples else []
    return {
        "mode": mode, "connections": len(opened), "samples": len(samples),
        "max_over_min_mean": statistics.mean(ratios) if ratios else None,
        "max_over_min_worst": max(ratios) if ratios else None,
        "samples_with_idle_worker": sum(1 for s in samples if min(s) == 0),
        "spread_mean": statistics.mean(spreads) if spreads else None,
        "spread_max": max(spreads) if spreads else None,
        "stddev_mean": statistics.mean(stdevs) if stdevs else None,
        "at_peak": peak, "active_after": final,
    }


async def first_byte(port, results, start_time):
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(reader.readexactly(1), timeout=10)
        results.append((t0 - start_time, time.perf_counter() - t0))
        writer.close()
    except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        results.append((t0 - start_time, None))


def percentile(values, p):
    values = sorted(values)
    if not values:
        return None
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


async def stall_run(binary, mode, backend, workers, stall_ms, stall_threshold):
    sluice = Sluice(binary, mode, backend.port, workers=workers, stall_threshold=stall_threshold,
                    stall_knob=f"0:{stall_ms}")
    results = []
    start = time.perf_counter()
    tasks = []
    rate, seconds = 200, 4.0
    stalled = False
    for i in range(int(rate * seconds)):
        target = start + i / rate
        now = time.perf_counter()
        if target > now:
            await asyncio.sleep(target - now)
        if not stalled and time.perf_counter() - start >= 1.0:
            sluice.process.send_signal(signal.SIGUSR1)
            stalled = True
        tasks.append(asyncio.create_task(first_byte(sluice.port, results, start)))
    await asyncio.gather(*tasks)
    sluice.stop()
    latencies = [r[1] * 1000 for r in results if r[1] is not None]
    return {
        "mode": mode, "stall_threshold": stall_threshold, "connections": len(results),
        "failed": sum(1 for r in results if r[1] is None),
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "over_100ms": sum(1 for l in latencies if l > 100),
    }


def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


async def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sluice", default=os.path.join(ROOT, ".build/release/sluice"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--stall-ms", type=int, default=2000)
    parser.add_argument("--json", default=os.path.join(ROOT, "bench/results/steering.json"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not os.path.exists(args.sluice):
        sys.exit(f"{args.sluice} not found: build it first (swift build -c release)")
    backend = Backend()
    await backend.start()

    fairness = []
    for mode in MODES:
        fairness.append(await fairness_run(args.sluice, mode, backend, args.workers, args.seed))
    stalls = []
    for mode, threshold in [("least_loaded", "200ms"), ("least_loaded", "50ms"), ("hash", "200ms"), ("shared_accept", "200ms")]:
        stalls.append(await stall_run(args.sluice, mode, backend, args.workers, args.stall_ms, threshold))

    print(f"\n### Fairness: {args.workers} workers, 1,000 connections in bursts of 50 every 200 ms, lifetimes 0.5-4 s\n")
    print("| mode | samples | mean max/min | worst max/min | samples with an idle worker | mean spread (max-min) | worst spread | mean stddev | per-worker active at peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in fairness:
        print(f"| {r['mode']} | {r['samples']} | {fmt(r['max_over_min_mean'])} | {fmt(r['max_over_min_worst'])} | "
              f"{r['samples_with_idle_worker']} | {fmt(r['spread_mean'], 1)} | {r['spread_max']} | {fmt(r['stddev_mean'])} | {r['at_peak']} |")
    print(f"\n### Stall: worker 0 blocked {args.stall_ms} ms, 200 new connections/s for 4 s; connect-to-first-byte latency\n")
    print("| mode | stall_threshold | connections | failed | p50 ms | p99 ms | max ms | over 100 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in stalls:
        print(f"| {r['mode']} | {r['stall_threshold']} | {r['connections']} | {r['failed']} | {fmt(r['p50_ms'])} | "
              f"{fmt(r['p99_ms'])} | {fmt(r['max_ms'], 0)} | {r['over_100ms']} |")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"fairness": fairness, "stall": stalls, "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}}, f, indent=2)
    print(f"\nraw results: {args.json}")


if __name__ == "__main__":
    asyncio.run(main())

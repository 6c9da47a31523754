#!/usr/bin/env python3
"""WebSocket load for bench/websocket, on the `websockets` package.

  wsload.py server PORT                 echo on any path; /sink counts what it
                                        gets and answers the total at the end
  wsload.py small URL CONNECTIONS SECONDS
                                        each connection sends a 64-byte message
                                        and waits for its echo, again and again:
                                        prints messages/s (JSON)
  wsload.py stream URL MIB              one connection sends MIB MiB in 1 MiB
                                        messages to /sink: prints MiB/s (JSON)
"""
import asyncio
import json
import os
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


async def server(port):
    async def handler(ws):
        if ws.request.path == "/sink":
            total = 0
            async for message in ws:
                if message == "done":
                    await ws.send(str(total))
                else:
                    total += len(message)
            return
        async for message in ws:
            await ws.send(message)

    async with serve(handler, "127.0.0.1", port, max_size=4 << 20, compression=None):
        print(f"ready {port}", flush=True)
        await asyncio.Future()


async def small(url, connections, seconds):
    deadline = time.monotonic() + seconds
    counts = [0] * connections
    payload = os.urandom(64)

    async def one(k):
        async with connect(url, compression=None, ping_interval=None) as ws:
            while time.monotonic() < deadline:
                await ws.send(payload)
                if await ws.recv() != payload:
                    raise RuntimeError("echo differs")
                counts[k] += 1

    started = time.monotonic()
    await asyncio.gather(*(one(k) for k in range(connections)))
    print(json.dumps({"messages": sum(counts), "per_second": sum(counts) / (time.monotonic() - started)}))


async def stream(url, mib):
    chunk = os.urandom(1 << 20)
    async with connect(url.rstrip("/") + "/sink", compression=None, max_size=4 << 20, ping_interval=None) as ws:
        started = time.monotonic()
        for _ in range(mib):
            await ws.send(chunk)
        await ws.send("done")
        total = int(await ws.recv())
        elapsed = time.monotonic() - started
    if total != mib << 20:
        raise RuntimeError(f"the sink got {total} bytes of {mib << 20}")
    print(json.dumps({"mib": mib, "mib_per_second": mib / elapsed}))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "server":
        asyncio.run(server(int(args[0])))
    elif command == "small":
        asyncio.run(small(args[0], int(args[1]), float(args[2])))
    elif command == "stream":
        asyncio.run(stream(args[0], int(args[1])))
    else:
        sys.exit(__doc__)

#!/usr/bin/env python3
"""WebSocket peers for the end-to-end tests, on the `websockets` package
(and `wsproto` for frames built by hand).

  wspeer.py server PORT            echo server; /reject200 and /reject426
                                   answer that status instead of 101
  wspeer.py transcript URL         messages of many sizes, a fragmented one
                                   with pings between, the close handshake:
                                   prints a JSON transcript
  wspeer.py load URL N SECONDS     N tunnels echoing checksummed random data
  wspeer.py early HOST PORT        a frame sent right behind the handshake,
                                   before any 101: prints what came back
  wspeer.py status URL             the status a handshake got
  wspeer.py idle URL SECONDS       quiet that long: prints whether the
                                   connection was closed meanwhile
"""
import asyncio
import hashlib
import json
import os
import random
import socket
import sys
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

BIG = 32 << 20


async def run_server(port):
    async def echo(ws):
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    def refuse(connection, request):
        if request.path == "/reject200":
            return connection.respond(200, "plain http\n")
        if request.path == "/reject426":
            return connection.respond(426, "upgrade elsewhere\n")
        return None

    # No keepalive pings of the library's own: deflating 16 MiB on a loaded
    # machine can starve them past their timeout (the transcript sends its own).
    async with serve(echo, "127.0.0.1", port, max_size=BIG, process_request=refuse, ping_interval=None):
        print(f"ready {port}", flush=True)
        await asyncio.Future()


def digest(data):
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


async def transcript(url):
    out = {"messages": []}
    async with connect(url, max_size=BIG, ping_interval=None, open_timeout=60, close_timeout=60) as ws:
        out["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        rng = random.Random(7)
        for size in (0, 125, 126, 65535, 65536, 16 << 20):
            for kind in ("text", "binary"):
                data = "".join(rng.choice("abcdef") for _ in range(size)) if kind == "text" and size < 70000 else None
                if data is None:
                    data = rng.randbytes(size) if kind == "binary" else "x" * size
                await ws.send(data)
                back = await ws.recv()
                out["messages"].append([kind, size, digest(back) == digest(data), type(back).__name__])

        async def fragments():
            for i in range(5):
                yield f"part{i}-" * 1000
                await ws.ping(f"between {i}".encode())

        await ws.send(fragments())
        back = await ws.recv()
        out["messages"].append(["fragmented", len(back), back == "".join(f"part{i}-" * 1000 for i in range(5)), "str"])
        pong = await ws.ping(b"last")
        await asyncio.wait_for(pong, 5)
        await ws.close(4000, "bye now")
        out["close"] = [ws.close_code, ws.close_reason]
    print(json.dumps(out, sort_keys=True))


async def load(url, count, seconds):
    deadline = time.monotonic() + seconds
    results = {"ok": 0, "bad": 0, "failed": 0, "messages": 0}

    async def one(k):
        rng = random.Random(k)
        try:
            async with connect(url, max_size=BIG, compression=None) as ws:
                while time.monotonic() < deadline:
                    data = rng.randbytes(rng.randint(1, 8192))
                    await ws.send(data)
                    back = await ws.recv()
                    results["messages"] += 1
                    if back != data:
                        results["bad"] += 1
                        return
            results["ok"] += 1
        except Exception as error:  # counted, and named once
            results["failed"] += 1
            results.setdefault("error", repr(error))

    await asyncio.gather(*(one(k) for k in range(count)))
    print(json.dumps(results, sort_keys=True))


def early(host, port):
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage
    from wsproto.frame_protocol import FrameProtocol

    conn = WSConnection(ConnectionType.CLIENT)
    handshake = conn.send(Request(host="a", target="/"))
    frame = FrameProtocol(client=True, extensions=[]).send_data("sent before the 101", fin=True)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(handshake + frame)
    got = []
    while len(got) < 2:
        data = sock.recv(65536)
        if not data:
            break
        conn.receive_data(data)
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                got.append("accepted")
            elif isinstance(event, TextMessage):
                got.append(event.data)
    print(json.dumps(got))


async def status(url):
    try:
        async with connect(url):
            print("101")
    except InvalidStatus as error:
        print(error.response.status_code, error.response.body.decode().strip())


async def idle(url, seconds):
    async with connect(url, ping_interval=None) as ws:
        await ws.send("hello")
        await ws.recv()
        started = time.monotonic()
        try:
            await asyncio.wait_for(ws.recv(), seconds)
            print("message")
        except ConnectionClosed:
            print(f"closed after {time.monotonic() - started:.1f}")
        except asyncio.TimeoutError:
            print("open")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "server":
        asyncio.run(run_server(int(args[0])))
    elif command == "transcript":
        asyncio.run(transcript(args[0]))
    elif command == "load":
        asyncio.run(load(args[0], int(args[1]), float(args[2])))
    elif command == "early":
        early(args[0], args[1])
    elif command == "status":
        asyncio.run(status(args[0]))
    elif command == "idle":
        asyncio.run(idle(args[0], float(args[1])))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

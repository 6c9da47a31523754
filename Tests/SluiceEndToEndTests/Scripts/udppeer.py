#!/usr/bin/env python3
"""UDP peers for the end-to-end tests of `mode: udp` listeners. HOST may be
127.0.0.1 or ::1 (the address family follows it). Standard library only.

  udppeer.py echo PORT [--id NAME] [--host HOST]
        echo server on HOST:PORT (default 127.0.0.1) until killed: every
        datagram comes back unchanged, except one starting with b"WHO?",
        answered with NAME (default echo-PORT) so that a client can tell
        which backend it reached. Prints "ready" once bound. Datagrams up to
        65507 bytes (IPv4) or 65527 (IPv6); buffers of 16 MiB (as root; else
        net.core.[rw]mem_max).

  udppeer.py load HOST PORT FLOWS COUNT [--max-size N] [--seed S] [--timeout SECONDS]
        FLOWS flows at once, each its own socket (its own source port), each
        sending COUNT datagrams of random sizes 1..N (default 65000) and
        random content (seeded by the flow's index and S; over 65507 bytes
        needs IPv6 all the way: a proxy cannot relay those to an IPv4
        backend), one at a time: send, wait for the echo (default 2 s),
        check it byte for byte. A datagram without an echo is sent once more
        (a retry); without an echo again it is lost, and a flow that loses 3
        in a row gives up (the datagrams it did not send count as lost). An echo of the datagram
        before, arriving late after a retry, is a duplicate, ignored.
        Prints {"flows", "ok_flows" (flows whose echoes were all exact, none
        lost), "datagrams" (exact echoes), "mismatched", "lost", "retries",
        "duplicates", "seconds", "first_mismatch": null or {"flow",
        "datagram" (its index in the flow), "sent_bytes", "got_bytes"}}.

  udppeer.py who HOST PORT FLOWS [--per-flow K] [--timeout SECONDS]
        FLOWS flows at once, each sending K (default 5) b"WHO?" datagrams one
        at a time from its own socket. Prints {"flows": [[the names flow 0
        got, null for no answer], ...], "affine": flows whose K answers are
        one name, "names": {name: flows that got at least one answer from it}}.

All flows share one thread (selectors): 200 flows of 1000 datagrams take
seconds, not minutes. Sockets are connect()ed: an answer from any other
address than HOST:PORT is not seen (so it counts as lost).
"""
import argparse
import heapq
import json
import random
import selectors
import socket
import sys
import time

WHO = b"WHO?"
BUFFER = 16 << 20  # 200 flows × a 64 KiB datagram each (truesize near 128 KiB) at once
GIVE_UP_AFTER = 3  # datagrams lost in a row
MAX_PAYLOAD = {socket.AF_INET: 65507, socket.AF_INET6: 65527}


def address(host, port):
    """(family, sockaddr) for a numeric host: 127.0.0.1 or ::1."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                                   flags=socket.AI_NUMERICHOST)[0]
    return family, sockaddr


def set_buffers(sock, size):
    """Buffers of `size`, past net.core.[rw]mem_max when root (the *FORCE options)."""
    for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
                         (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


# MARK: - echo

def echo(port, name, host):
    family, sockaddr = address(host, port)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    set_buffers(sock, BUFFER)
    sock.bind(sockaddr)
    answer = name.encode()
    buf = bytearray(65536)
    view = memoryview(buf)
    print("ready", flush=True)
    while True:
        try:
            n, peer = sock.recvfrom_into(buf)
        except OSError:
            continue
        reply = answer if n >= 4 and buf.startswith(WHO) else view[:n]
        try:
            sock.sendto(reply, peer)
        except OSError:
            pass


# MARK: - flows

class Flow:
    """One socket and the datagrams it sends one at a time. `reply(data)`
    says what an answer to `current` was: "ok", "bad" or "stale" (ignored)."""

    def __init__(self, family, sockaddr):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        set_buffers(self.sock, 1 << 20)
        self.sock.connect(sockaddr)
        self.current = None
        self.attempt = 0
        self.token = 0  # bumped at each send: older deadlines in the heap are void
        self.lost_in_a_row = 0
        self.stopped = False

    def next(self):
        """The next datagram to send, or None when done."""
        raise NotImplementedError

    def reply(self, data):
        raise NotImplementedError

    def lost(self):
        raise NotImplementedError

    def give_up(self):
        """Called once when the flow stops after GIVE_UP_AFTER losses in a row."""


class LoadFlow(Flow):
    def __init__(self, family, sockaddr, index, count, max_size, seed):
        super().__init__(family, sockaddr)
        self.rng = random.Random(seed * 1_000_003 + index)
        # Datagrams are slices of one random pool: random.randbytes would make
        # ~0.5 GB/s, too slow for gigabytes of datagrams.
        self.pool = self.rng.randbytes(2 * max_size)
        self.count, self.max_size = count, max_size
        self.sent = 0
        self.previous = None
        self.ok = self.bad = self.missing = 0
        self.first_bad = None

    def next(self):
        self.previous = self.current
        if self.sent == self.count:
            return None
        self.sent += 1
        size = self.rng.randint(1, self.max_size)
        start = self.rng.randrange(len(self.pool) - size + 1)
        data = self.pool[start:start + size]
        return b"w" + data[1:] if data.startswith(WHO) else data

    def reply(self, data):
        if data == self.current:
            self.ok += 1
            return "ok"
        if data == self.previous:
            return "stale"
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = {"datagram": self.sent - 1, "sent_bytes": len(self.current), "got_bytes": len(data)}
        return "bad"

    def lost(self):
        self.missing += 1

    def give_up(self):
        self.missing += self.count - self.sent


class WhoFlow(Flow):
    def __init__(self, family, sockaddr, count):
        super().__init__(family, sockaddr)
        self.count = count
        self.names = []

    def next(self):
        return WHO if len(self.names) < self.count else None

    def reply(self, data):
        self.names.append(data.decode(errors="replace"))
        return "ok"

    def lost(self):
        self.names.append(None)

    def give_up(self):
        self.names += [None] * (self.count - len(self.names))


def drive(flows, timeout):
    """Runs the flows together, each with one datagram in flight, until all
    are done. Returns {"retries", "duplicates"}."""
    stats = {"retries": 0, "duplicates": 0}
    sel = selectors.DefaultSelector()
    deadlines = []  # (deadline, sequence, flow, token)
    sequence = 0
    active = 0

    def send(flow):
        nonlocal sequence
        flow.token += 1
        sequence += 1
        heapq.heappush(deadlines, (time.monotonic() + timeout, sequence, flow, flow.token))
        try:
            flow.sock.send(flow.current)
        except OSError:
            pass  # ECONNREFUSED from an earlier ICMP error, or the like: the deadline retries

    def advance(flow):
        nonlocal active
        flow.current = None if flow.stopped else flow.next()
        flow.attempt = 0
        if flow.current is None:
            sel.unregister(flow.sock)
            flow.sock.close()
            active -= 1
        else:
            send(flow)

    for flow in flows:
        sel.register(flow.sock, selectors.EVENT_READ, flow)
        active += 1
        advance(flow)
    while active:
        wait = max(0.0, deadlines[0][0] - time.monotonic()) if deadlines else None
        for key, _ in sel.select(wait):
            flow = key.data
            try:
                data = flow.sock.recv(65536, socket.MSG_DONTWAIT)
            except OSError:
                continue  # nothing after all, or an ICMP error: the deadline decides
            if flow.current is None:
                continue
            verdict = flow.reply(data)
            if verdict == "stale":
                stats["duplicates"] += 1
                continue
            flow.lost_in_a_row = 0
            advance(flow)
        now = time.monotonic()
        while deadlines and deadlines[0][0] <= now:
            _, _, flow, token = heapq.heappop(deadlines)
            if token != flow.token or flow.current is None:
                continue
            if flow.attempt == 0:
                stats["retries"] += 1
                flow.attempt = 1
                send(flow)
                continue
            flow.lost()
            flow.lost_in_a_row += 1
            if flow.lost_in_a_row >= GIVE_UP_AFTER:
                flow.give_up()
                flow.stopped = True
            advance(flow)
    return stats


def load(host, port, flows, count, max_size, seed, timeout):
    family, sockaddr = address(host, port)
    if not 1 <= max_size <= MAX_PAYLOAD[family]:
        sys.exit(f"--max-size must be 1..{MAX_PAYLOAD[family]} for {host}")
    started = time.monotonic()
    group = [LoadFlow(family, sockaddr, k, count, max_size, seed) for k in range(flows)]
    stats = drive(group, timeout)
    first_bad = next(({"flow": k, **f.first_bad} for k, f in enumerate(group) if f.first_bad), None)
    print(json.dumps({
        "flows": flows,
        "ok_flows": sum(1 for f in group if f.ok == count),
        "datagrams": sum(f.ok for f in group),
        "mismatched": sum(f.bad for f in group),
        "lost": sum(f.missing for f in group),
        "retries": stats["retries"],
        "duplicates": stats["duplicates"],
        "seconds": round(time.monotonic() - started, 3),
        "first_mismatch": first_bad,
    }))


def who(host, port, flows, per_flow, timeout):
    family, sockaddr = address(host, port)
    group = [WhoFlow(family, sockaddr, per_flow) for _ in range(flows)]
    drive(group, timeout)
    names = {}
    for f in group:
        for name in set(n for n in f.names if n is not None):
            names[name] = names.get(name, 0) + 1
    affine = sum(1 for f in group if f.names and f.names[0] is not None and len(set(f.names)) == 1)
    print(json.dumps({"flows": [f.names for f in group], "affine": affine, "names": names}, sort_keys=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("echo")
    p.add_argument("port", type=int)
    p.add_argument("--id", dest="name")
    p.add_argument("--host", default="127.0.0.1")
    p = commands.add_parser("load")
    for name in ("host", "port", "flows", "count"):
        p.add_argument(name, type=str if name == "host" else int)
    p.add_argument("--max-size", type=int, default=65000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=2.0)
    p = commands.add_parser("who")
    for name in ("host", "port", "flows"):
        p.add_argument(name, type=str if name == "host" else int)
    p.add_argument("--per-flow", type=int, default=5)
    p.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    if args.command == "echo":
        echo(args.port, args.name or f"echo-{args.port}", args.host)
    elif args.command == "load":
        load(args.host, args.port, args.flows, args.count, args.max_size, args.seed, args.timeout)
    else:
        who(args.host, args.port, args.flows, args.per_flow, args.timeout)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

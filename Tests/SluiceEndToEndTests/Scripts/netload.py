#!/usr/bin/env python3
"""Traffic for the end-to-end tests that Swift's test process cannot make
itself, run inside the test's own network namespace (nsenter --net=...).

  flood PORT COUNT        COUNT SYNs from 127.0.0.2 (distinct source ports)
                          whose handshakes never complete: the namespace
                          blackholes 127.0.0.2, so SYN-ACKs go nowhere.
  syn PORT SPORT SEQ      one SYN with that source port and sequence number
  echo PORT               echo server on 127.0.0.1:PORT until killed
  hold PORT COUNT         COUNT connections, each proven by one echoed byte;
                          prints "held", closes them at stdin EOF
  try PORT                one connection, one byte: prints "echoed" or "closed"
"""
import random
import selectors
import socket
import struct
import sys

SOURCE = "127.0.0.2"
DESTINATION = "127.0.0.1"


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_packet(dport: int, sport: int, seq: int) -> bytes:
    src, dst = socket.inet_aton(SOURCE), socket.inet_aton(DESTINATION)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.randrange(65536), 0, 64,
                     socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp


def raw_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    return s


def flood(port: int, count: int) -> None:
    s = raw_socket()
    ports = random.sample(range(1024, 65536), count)
    for sport in ports:
        s.sendto(syn_packet(port, sport, random.randrange(1 << 32)), (DESTINATION, 0))
    print(f"sent {count}", flush=True)


def syn(port: int, sport: int, seq: int) -> None:
    raw_socket().sendto(syn_packet(port, sport, seq), (DESTINATION, 0))


def echo(port: int) -> None:
    listener = socket.create_server((DESTINATION, port), backlog=4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    print("listening", flush=True)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionError:
                data = b""
            if not data:
                sel.unregister(conn)
                conn.close()
                continue
            conn.sendall(data)


def connect(port: int, timeout: float) -> socket.socket:
    """A client from a source port below 40000: a test may narrow the
    namespace's ephemeral range to starve the proxy's own connects."""
    for _ in range(100):
        try:
            return socket.create_connection((DESTINATION, port), timeout=timeout,
                                            source_address=(DESTINATION, random.randrange(20000, 40000)))
        except OSError as error:
            if error.errno != 98:  # EADDRINUSE: try another port
                raise
    raise OSError("no free source port")


def hold(port: int, count: int) -> None:
    conns = [connect(port, timeout=10) for _ in range(count)]
    for c in conns:
        c.sendall(b"x")
        if c.recv(1) != b"x":
            raise SystemExit("no echo")
    print("held", flush=True)
    sys.stdin.read()
    for c in conns:
        c.close()


def attempt(port: int) -> None:
    try:
        with connect(port, timeout=2) as c:
            c.sendall(b"x")
            print("echoed" if c.recv(1) == b"x" else "closed", flush=True)
    except OSError:
        print("closed", flush=True)


if __name__ == "__main__":
    command, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    {"flood": flood, "syn": syn, "echo": echo, "hold": hold, "try": attempt}[command](*args)

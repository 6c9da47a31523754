#!/usr/bin/env python3
"""An HTTP/1.1 backend for the end-to-end tests, with the odd responses
nginx will not give on demand. Usage: httpbackend.py PORT NAME [IDLE_SECONDS]
(with IDLE_SECONDS, a kept-alive connection idle that long is closed)

  GET  /bytes/N      N bytes (deterministic), Content-Length
  HEAD /bytes/N      the same head, no body
  GET  /name         this backend's NAME
  GET  /headers      the request's header fields, one per line
  GET  /etag         ETag "v1"; 304 when If-None-Match matches
  GET  /close        a body delimited by closing the connection
  GET  /die          a head promising 1 MB, 1000 bytes, then the connection closed
  POST /sum          "<length> <sha256>" of the body (Content-Length or chunked)
"""
import hashlib
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def pattern(n):
    block = bytes(range(256)) * 4096
    out = bytearray()
    while len(out) < n:
        out += block[: n - len(out)]
    return bytes(out)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "backend"

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            self.reply(200, pattern(int(self.path[7:])))
        elif self.path.endswith("/name"):
            self.reply(200, self.name.encode())
        elif self.path == "/headers":
            self.reply(200, "".join(f"{k}: {v}\n" for k, v in self.headers.items()).encode())
        elif self.path == "/etag":
            if self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304)
                self.send_header("ETag", '"v1"')
                self.end_headers()
            else:
                self.reply(200, b"versioned", [("ETag", '"v1"')])
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until close " * 1000)
            self.close_connection = True
        elif self.path == "/die":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.reply(404, b"no such path\n")

    def do_POST(self):
        digest = hashlib.sha256()
        length = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    digest.update(chunk)
                    left -= len(chunk)
                length += size
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                length += len(chunk)
                left -= len(chunk)
        self.reply(200, f"{length} {digest.hexdigest()}".encode())


def main():
    Handler.name = sys.argv[2] if len(sys.argv) > 2 else "backend"
    if len(sys.argv) > 3:
        Handler.timeout = float(sys.argv[3])
    # The default accept queue of 5 drops SYNs from a burst of keep-alive
    # connects on a loaded machine; a dropped SYN waits a second to retry.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A loopback HTTP proxy in front of the real Debian mirror that breaks it in one way.

    badmirror.py PORT UPSTREAM MODE [PACKAGE]  (UPSTREAM: the mirror URL, e.g. http://HOST/debian)

MODE: 404-pool   every pool/ file (a .deb) is 404 Not Found, indices are served as is
      corrupt-index  Packages files of binary-* keep their size but one byte is flipped
      badsig     the signed text of InRelease is altered (one digit of its Date: line)
      not-in-snapshot  PACKAGE's pool files, and a dists/ path containing PACKAGE (say
                 "binary-amd64/Packages"), are "404 Not in snapshot", as a pinned run's
                 repository view answers a file its snapshot lacks
Served at http://127.0.0.1:PORT/debian/..., and as an http proxy (http_proxy=http://127.0.0.1:PORT):
a proxy request names the whole URL, whose path after /debian is the same.
"""

import http.server
import socketserver
import sys
import urllib.error
import urllib.request

PORT, UPSTREAM, MODE = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]
LACKED = sys.argv[4] if len(sys.argv) > 4 else ""


def lacked(path):
    """Whether a not-in-snapshot view lacks ``path``: PACKAGE's .debs, or a dists/ file."""
    if path.startswith("/pool/"):
        return path.rsplit("/", 1)[-1].startswith(LACKED + "_")
    return path.startswith("/dists/") and LACKED in path


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802
        path = self.path.split("/debian", 1)[-1]
        if MODE == "404-pool" and path.startswith("/pool/"):
            self.send_error(404, "Not Found")
            return
        if MODE == "not-in-snapshot" and lacked(path):
            self.send_error(404, "Not in snapshot")
            return
        try:
            with urllib.request.urlopen(UPSTREAM + path, timeout=60) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "application/octet-stream")
        except urllib.error.HTTPError as err:
            self.send_error(err.code, err.reason)
            return
        if MODE == "corrupt-index" and "/binary-" in path and "Release" not in path:
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        if MODE == "badsig" and path.endswith("/InRelease"):
            text = body.decode()
            head, sep, rest = text.partition("\nDate: ")
            digit = rest[5]
            rest = rest[:5] + ("1" if digit != "1" else "2") + rest[6:]
            body = (head + sep + rest).encode()
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


Server(("127.0.0.1", PORT), Handler).serve_forever()

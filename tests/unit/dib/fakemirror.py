"""A tiny fake Debian archive served by http.server in a thread, for the tests of
dib.debprefetch and dib.suiteview: InRelease, one Packages.xz, the .debs; any path can
hang, trickle or lie."""

import hashlib
import http.server
import lzma
import threading

from dib import debprefetch

RELEASE = "bookworm"
POLL_SECONDS = 0.02  # how often the serving thread looks whether it should stop
TRICKLE_SECONDS = 0.2  # between two bytes of a trickled file
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy",
                   "NO_PROXY", "all_proxy", "ALL_PROXY")


def stanza(name, version="1.0", priority="optional", depends="", pre_depends="",
           provides="", body=None, arch="amd64"):
    body = body if body is not None else f"deb of {name}".encode()
    lines = [f"Package: {name}", f"Version: {version}", f"Architecture: {arch}"]
    lines += [f"Priority: {priority}"]
    if pre_depends:
        lines.append(f"Pre-Depends: {pre_depends}")
    if depends:
        lines.append(f"Depends: {depends}")
    if provides:
        lines.append(f"Provides: {provides}")
    lines += [
        "Description: a test package",
        " with a continuation line: Depends: not-a-field",
        f"Filename: pool/main/{name[0]}/{name}/{name}_{version.split(':')[-1]}_{arch}.deb",
        f"Size: {len(body)}",
        f"SHA256: {hashlib.sha256(body).hexdigest()}",
    ]
    return "\n".join(lines) + "\n", lines[-3].split(": ", 1)[1], body


class Mirror:
    """A fake archive: (In)Release, one Packages.xz, the .debs; paths can hang or lie."""

    def __init__(self, protocol="HTTP/1.0"):
        self.files = {}
        self.connections = set()
        self.proxied = 0
        self.hang = set()
        self.trickle = set()
        self.release_event = threading.Event()
        self.requests = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = protocol  # HTTP/1.1: connections are kept alive
            # Headers and body are two writes: with Nagle's algorithm the body waits for
            # the client's delayed ACK, ~40 ms a file on a kept-alive connection.
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802 (http.server's name)
                mirror.connections.add(self.client_address)
                path = self.path
                if path.startswith("http://"):  # asked as a proxy
                    mirror.proxied += 1
                    path = "/" + path.split("/", 3)[3]
                path = path.split("/", 2)[2]  # drop "/debian/"
                mirror.requests.append(path)
                if path in mirror.hang:
                    mirror.release_event.wait(30)
                    return
                body = mirror.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path not in mirror.trickle:
                    self.wfile.write(body)
                    return
                for byte in body:  # alive, but slower than any deadline
                    if mirror.release_event.wait(TRICKLE_SECONDS):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 64  # 8 workers connect at once; 5 would drop SYNs

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # shutdown() waits for the serving loop's next look at its flag: every 0.5 s by
        # default, which every test would pay at its end.
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": POLL_SECONDS}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/debian"

    def publish(self, stanzas, lie_about=(), release_name="InRelease"):
        text = ""
        for entry, filename, body in stanzas:
            text += entry + "\n"
            self.files[filename] = b"not the listed bytes" if filename in lie_about else body
        packed = lzma.compress(text.encode())
        self.files[f"dists/{RELEASE}/main/binary-amd64/Packages.xz"] = packed
        release = (
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"
            f"Origin: Debian\nSuite: stable\nCodename: {RELEASE}\nMD5Sum:\n"
            f" {hashlib.md5(packed).hexdigest()} {len(packed)} main/binary-amd64/Packages.xz\n"
            "SHA256:\n"
            f" {'0' * 64} {len(text)} main/binary-amd64/Packages\n"
            f" {hashlib.sha256(packed).hexdigest()} {len(packed)} main/binary-amd64/Packages.xz\n"
            "-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n"
        )
        self.files[f"dists/{RELEASE}/{release_name}"] = release.encode()

    def close(self):
        self.release_event.set()
        self.server.shutdown()
        self.server.server_close()


def archive():
    """A small suite: what minbase wants, with alternatives, Provides and an epoch."""
    return [
        stanza("base-files", priority="required", depends="mawk | gawk, awk"),
        stanza("mawk", priority="required", provides="awk"),
        stanza("gawk", provides="awk"),  # a second provider of awk: never picked
        stanza("dpkg", "1:1.21.22", priority="required",
               pre_depends="libc6 (>= 2.34), zlib1g:any", depends="tar (>= 1.28-1)"),
        stanza("libc6", depends="libgcc-s1 | libgcc1"),
        stanza("libgcc-s1", pre_depends="usrmerge"),
        stanza("usrmerge"),  # bookworm's debootstrap excludes it as a dependency
        stanza("usr-is-merged"),
        stanza("zlib1g", "1:1.2.13.dfsg-1"),
        stanza("tar"),
        stanza("apt", priority="important", depends="debconf (>= 0.5) | debconf-2.0"),
        stanza("debconf"),
        stanza("sudo"),
        stanza("vim"),  # optional, not asked for
    ]


MINBASE = {"base-files", "mawk", "dpkg", "libc6", "libgcc-s1", "usr-is-merged", "zlib1g",
           "tar", "apt", "debconf"}


def index_of(*stanzas):
    text = "\n".join(entry for entry, _, _ in stanzas)
    return debprefetch.parse_packages(text.encode())

"""diskimage-builder compatibility suite: build upstream's own elements with dib.

``python -m tests.compat.run [--only ELEMENT ...] [--timeout S] [--wholesale] [--workdir DIR]``
(``tox -e dib-compat``; needs root, like the integration tests).

For every element of ``table.yaml``: one ``python -m dib`` build of ``debian-minimal``
bookworm plus the element, with upstream's copy of the element first on
ELEMENTS_PATH, then the effects the table lists are checked in the image's tarball.
Prints ``N of M upstream elements built unchanged``; every failing element gets its
first error line (from dib's ``<output>.failure.json``, or the unmet effect).

ELEMENTS_PATH for one build is ``SHADOW:HELPERS`` (dib appends its bundled elements):

- SHADOW holds symlinks to upstream's element under test and to its upstream
  element-deps closure, leaving out (and not following) elements dib bundles: those
  resolve to dib's own copy, and are measured when they are the element under test.
  The element under test always comes from upstream, shadowing dib's bundled one
  (``debian-minimal``, ``dpkg``, ``vm``, ...).
- HELPERS is ``tests/compat/elements``: small ``compat-*`` elements that give an
  element something to act on (a static file for install-static, a source
  repository for source-repositories, ...).

``--wholesale`` instead puts upstream's entire element tree first on ELEMENTS_PATH
and builds ``debian-minimal`` (tar) and ``vm debian-minimal`` (qcow2), then boots the
qcow2 with ``python -m dib.boottest``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import yaml

from dib import failure
from dib.mirror import apt_source_uris, find_mirror, pick_archive_uri
from tests.compat import effects, upstream

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TABLE = HERE / "table.yaml"
HELPERS = HERE / "elements"
# the dib under test: this checkout, or a `git archive` of --dib-ref (set by main)
DIB_TREE = REPO
DEFAULT_WORKDIR = Path.home() / ".cache" / "dib-matrix" / "compat-run"
DEFAULT_TIMEOUT = 900.0
RELEASE = "bookworm"
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE = "debian-minimal"


@dataclass
class Case:
    element: str
    extra: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    types: str = "tar"
    expect: List[Dict[str, Any]] = field(default_factory=list)
    exclude: Optional[str] = None


@dataclass
class Outcome:
    element: str
    passed: bool
    built: bool
    seconds: float
    error: Optional[str] = None
    phase: Optional[str] = None
    hook: Optional[str] = None
    failed_element: Optional[str] = None
    missing: List[str] = field(default_factory=list)
    log: Optional[str] = None


def load_table(path: Path = TABLE) -> List[Case]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a mapping of element -> case")
    cases = []
    for element, spec in data.items():
        spec = spec or {}
        unknown = set(spec) - {"extra", "env", "types", "expect", "exclude"}
        if unknown:
            raise ValueError(f"{path}: {element}: unknown keys {sorted(unknown)}")
        for effect in spec.get("expect", []):
            effects.validate(effect)
        if not spec.get("exclude") and not spec.get("expect"):
            raise ValueError(f"{path}: {element}: no expect (an exit status is not an effect)")
        cases.append(
            Case(
                element=element,
                extra=list(spec.get("extra", [])),
                env={k: str(v) for k, v in (spec.get("env") or {}).items()},
                types=str(spec.get("types", "tar")),
                expect=list(spec.get("expect", [])),
                exclude=spec.get("exclude"),
            )
        )
    return cases


def helper_names() -> List[str]:
    return sorted(p.name for p in HELPERS.iterdir() if p.is_dir())


def shadow_elements(up: Path, case: Case, bundled: Sequence[str]) -> List[str]:
    """Upstream elements to shadow for ``case``: the element under test and the upstream
    closure of it and of its extras (helpers' deps included), minus dib's bundled ones."""
    helpers = set(helper_names())
    roots: List[str] = [case.element]
    pending = list(case.extra)
    seen_helpers = set()
    while pending:
        name = pending.pop()
        if name in helpers:
            if name not in seen_helpers:
                seen_helpers.add(name)
                pending.extend(upstream.element_deps(HELPERS, name))
        elif name not in bundled:
            roots.append(name)
    names: Dict[str, None] = {}
    for index, root in enumerate(roots):
        closure = upstream.shadow_closure(up, root, bundled)
        if index and root in bundled:
            continue
        names.update(dict.fromkeys(closure))
    return list(names)


def fixtures(dest: Path, mirror: str) -> Path:
    """Files the table's env points at ({fixtures})."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "sources.list").write_text(
        f"# dib-compat apt-sources\ndeb {mirror} {RELEASE} main\n", encoding="utf-8"
    )
    (dest / "apt.conf").write_text(
        '// dib-compat apt-conf\nAcquire::Retries "3";\n', encoding="utf-8"
    )
    (dest / "dpkg-manifest.json").write_text(
        json.dumps({"packages": [{"package": "dib-compat-pinned", "version": "1.0"}]}),
        encoding="utf-8",
    )
    (dest / "cache-url.txt").write_text("dib-compat cache-url\n", encoding="utf-8")
    (dest / "50unattended-upgrades").write_text(
        '// dib-compat autoupdates\nUnattended-Upgrade::Origins-Pattern { "origin=Debian"; };\n',
        encoding="utf-8",
    )
    (dest / "jail.local").write_text("# dib-compat fail2ban\n[sshd]\nenabled = true\n",
                                     encoding="utf-8")
    repo = dest / "compat-src.git"
    if not (repo / ".git").exists():
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir()
        git = ["git", "-C", str(repo), "-c", "user.name=dib-compat", "-c", "user.email=dib@compat"]
        subprocess.run([*git, "init", "-q", "-b", "master"], check=True)
        (repo / "README").write_text("dib-compat source repository\n", encoding="utf-8")
        subprocess.run([*git, "add", "README"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "compat"], check=True)
    return dest


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def mirror_env() -> Dict[str, str]:
    """The Debian mirrors given to every build, as a diskimage-builder user without
    access to the default hosts sets them: DIB_DISTRIBUTION_MIRROR (dib's own choice:
    the environment, else this machine's apt sources) and DIB_DEBIAN_SECURITY_MIRROR
    (a debian-security archive in the apt sources, when there is one)."""
    env = {"DIB_DISTRIBUTION_MIRROR": find_mirror("debian")}
    security = os.environ.get("DIB_DEBIAN_SECURITY_MIRROR") or pick_archive_uri(
        apt_source_uris(), "debian-security"
    )
    if security:
        env["DIB_DEBIAN_SECURITY_MIRROR"] = security
    return env


def base_env(image_cache: Path, extra: Mapping[str, str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIB_") and k != "ELEMENTS_PATH"}
    # user-given DIB_* (a mirror, a proxy) are kept; a case's own env wins
    env.update({k: v for k, v in os.environ.items() if k.startswith("DIB_")})
    # the PATH sudo would give (secure_path) behind the interpreter's own bin dir, as
    # when diskimage-builder runs from its virtualenv: no pyenv shims or other
    # per-user tools answering `command -v python2` for the elements
    env["PATH"] = ":".join([str(Path(sys.executable).parent), SECURE_PATH])
    env["DIB_RELEASE"] = RELEASE
    env.update(mirror_env())
    env["DIB_IMAGE_CACHE"] = str(image_cache)
    env.update(extra)
    return env


def dib_snapshot(ref: str, dest: Path) -> Path:
    """``dib/`` and ``elements/`` as committed at ``ref`` (git archive), in ``dest``: a
    consistent dib while the working tree is being edited."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "dib", "elements"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_build(
    elements: Sequence[str],
    output: Path,
    types: str,
    elements_path: Sequence[Path],
    env: Dict[str, str],
    image_cache: Path,
    timeout: float,
) -> tuple:
    output.parent.mkdir(parents=True, exist_ok=True)
    log = output.with_suffix(".log")
    env = dict(env)
    # upstream's python package is NOT made importable: elements must run on dib alone
    # (dib gives package-installs-squash a stand-in diskimage_builder when it is missing)
    if DIB_TREE != REPO:
        env["PYTHONPATH"] = str(DIB_TREE)
    env["ELEMENTS_PATH"] = ":".join(str(p) for p in elements_path)
    env["TMPDIR"] = env.get("TMPDIR", "/tmp")
    cmd = [sys.executable, "-m", "dib", "-o", str(output), "-t", types,
           "--image-cache", str(image_cache), *elements]
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("# " + " ".join(cmd) + "\n# ELEMENTS_PATH=" + env["ELEMENTS_PATH"] + "\n")
        handle.flush()
        try:
            done = subprocess.run(cmd, env=env, cwd=output.parent, stdout=handle,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False)
            status = done.returncode
        except subprocess.TimeoutExpired:
            status = None
    return status, time.monotonic() - started, log


def first_error(output: Path, log: Path, status: Optional[int]) -> Dict[str, Optional[str]]:
    record_path = Path(str(output) + failure.SUFFIX)
    if status is None:
        return {"error": "timed out"}
    if record_path.exists():
        try:
            record = failure.read(record_path)
        except (OSError, ValueError):
            record = None
        if record is not None:
            return {
                "error": record.error or record.message,
                "phase": record.phase,
                "hook": record.hook,
                "element": record.element,
            }
    tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return {"error": f"exit {status}: " + (tail[-1] if tail else "no output")}


def run_case(case: Case, up: Path, work: Path, image_cache: Path, subs: Mapping[str, str],
             timeout: float) -> Outcome:
    bundled = sorted(p.name for p in (DIB_TREE / "elements").iterdir() if p.is_dir())
    case_dir = work / "elements" / case.element
    shutil.rmtree(case_dir, ignore_errors=True)
    shadow = upstream.make_shadow_dir(up, shadow_elements(up, case, bundled), case_dir / "shadow")
    output = case_dir / "image"
    elements = [] if case.element == BASE else [BASE]
    elements += [*case.extra, case.element]
    env = base_env(image_cache, {k: v.format(**subs) for k, v in case.env.items()})
    status, seconds, log = run_build(elements, output, case.types, [shadow, HELPERS], env,
                                     image_cache, timeout)
    outcome = Outcome(case.element, passed=False, built=status == 0, seconds=round(seconds, 1),
                      log=str(log))
    if status != 0:
        info = first_error(output, log, status)
        outcome.error, outcome.phase = info.get("error"), info.get("phase")
        outcome.hook, outcome.failed_element = info.get("hook"), info.get("element")
        return outcome
    tarball = Path(str(output) + ".tar")
    outcome.missing = effects.check(tarball, case.expect, output,
                                    {**subs, "output": str(output)})
    outcome.passed = not outcome.missing
    if outcome.missing:
        outcome.error = "effect not found: " + outcome.missing[0]
    else:
        discard_images(output)
    return outcome


# A checked image is no longer needed; 52 of them (about 700 MB each with a kernel)
# would fill the disk. A failing element's image stays beside its log.
IMAGE_SUFFIXES = (".tar", ".qcow2", ".raw", ".vhd", ".vmdk", ".img")


def discard_images(output: Path) -> None:
    for path in output.parent.glob(output.name + ".*"):
        if path.suffix in IMAGE_SUFFIXES and path.is_file():
            path.unlink()


def wholesale(up: Path, work: Path, image_cache: Path, timeout: float,
              boot_timeout: float) -> Dict[str, Any]:
    """Upstream's whole tree first on ELEMENTS_PATH: debian-minimal (tar), vm (qcow2), boot."""
    results: Dict[str, Any] = {}
    base = work / "wholesale"
    shutil.rmtree(base, ignore_errors=True)
    env = base_env(image_cache, {})
    for name, elements, types in (
        ("tar", [BASE], "tar"),
        ("vm", ["vm", BASE], "qcow2"),
    ):
        output = base / name / "image"
        status, seconds, log = run_build(elements, output, types, [up, HELPERS], env,
                                         image_cache, timeout)
        entry: Dict[str, Any] = {"built": status == 0, "seconds": round(seconds, 1),
                                 "log": str(log)}
        if status == 0 and name == "tar":
            entry["missing"] = effects.check(Path(str(output) + ".tar"), [
                {"contains": ["/etc/debian_version", r"^12\."]},
                {"package": "systemd"},
            ])
        elif status != 0:
            entry.update(first_error(output, log, status))
        results[name] = entry
    vm = results["vm"]
    if vm["built"]:
        image = base / "vm" / "image.qcow2"
        serial = base / "vm" / "serial.log"
        result_json = base / "vm" / "boot.json"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "dib.boottest", str(image), "--serial-log", str(serial),
             "--timeout", str(int(boot_timeout)), "--result-json", str(result_json)],
            cwd=REPO, capture_output=True, text=True, check=False,
        )
        boot: Dict[str, Any] = {"status": done.returncode,
                                "seconds": round(time.monotonic() - started, 1),
                                "serial_log": str(serial)}
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(result_json.read_text())
            boot.update({k: data.get(k) for k in ("passed", "evidence", "infrastructure")})
        if "passed" not in boot:
            boot["evidence"] = (done.stderr or done.stdout).strip().splitlines()[-1:]
        results["boot"] = boot
    else:
        results["boot"] = {"skipped": "the vm image did not build"}
    return results


def summary_lines(outcomes: Sequence[Outcome], excluded: Sequence[Case]) -> List[str]:
    passed = [o for o in outcomes if o.passed]
    lines = [f"{len(passed)} of {len(outcomes)} upstream elements built unchanged"]
    failing = [o for o in outcomes if not o.passed]
    if failing:
        lines.append("failing:")
        for o in failing:
            where = ", ".join(
                f"{k} {v}" for k, v in (("phase", o.phase), ("hook", o.hook),
                                        ("element", o.failed_element)) if v
            )
            lines.append(f"  {o.element}: {o.error}" + (f" [{where}]" if where else ""))
    if excluded:
        lines.append("excluded (cannot work here, not counted):")
        lines.extend(f"  {c.element}: {c.exclude}" for c in excluded)
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.compat.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="ELEMENT",
                        help="build only this element (repeatable)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds per build (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="builds at a time (default 1; they share the image cache)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--image-cache", type=Path,
                        default=Path.home() / ".cache" / "image-create")
    parser.add_argument("--upstream-cache", type=Path, default=upstream.DEFAULT_CACHE)
    parser.add_argument("--wholesale", action="store_true",
                        help="also build with upstream's whole element tree and boot the vm")
    parser.add_argument("--no-elements", action="store_true",
                        help="skip the per-element builds (with --wholesale)")
    parser.add_argument("--boot-timeout", type=float, default=600.0)
    parser.add_argument("--offline", action="store_true", help="use the cached wheel only")
    parser.add_argument("--dib-ref", metavar="REF",
                        help="test dib as committed at this git ref (default: the working tree)")
    args = parser.parse_args(argv)
    global DIB_TREE
    if os.geteuid() != 0:
        print("dib-compat: needs root (debootstrap, chroot, mounts)", file=sys.stderr)
        return 2
    started = time.monotonic()
    cases = load_table()
    if args.only:
        unknown = set(args.only) - {c.element for c in cases}
        if unknown:
            print(f"dib-compat: not in the table: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.element in args.only]
    tree = upstream.upstream_tree(args.upstream_cache, args.offline)
    up = tree / upstream.ELEMENTS_SUBDIR
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.dib_ref:
        DIB_TREE = dib_snapshot(args.dib_ref, work / "dib-tree")
    args.image_cache.mkdir(parents=True, exist_ok=True)
    mirror = find_mirror("debian")
    fixture_dir = fixtures(work / "fixtures", mirror)
    print(f"dib-compat: diskimage-builder {upstream.VERSION} elements from {up}; "
          f"dib from {DIB_TREE}", flush=True)
    outcomes: List[Outcome] = []
    excluded = [c for c in cases if c.exclude]
    runnable = [] if args.no_elements else [c for c in cases if not c.exclude]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.dib_ref or "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = not args.dib_ref and subprocess.run(
        ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "dib", "elements"],
        check=False).returncode != 0
    result: Dict[str, Any] = {"upstream": upstream.VERSION, "dib_ref": args.dib_ref,
                              "dib_commit": commit[:12] + ("+working-tree" if dirty else ""),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with http_server(fixture_dir) as url:
        subs = {"fixtures": str(fixture_dir), "url": url, "mirror": mirror,
                "cache": str(args.image_cache)}
        run = functools.partial(run_case, up=up, work=work, image_cache=args.image_cache,
                                subs=subs, timeout=args.timeout)
        if args.jobs > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(args.jobs) as pool:
                futures = [pool.submit(run, case) for case in runnable]
                for future in futures:
                    outcomes.append(future.result())
                    _progress(outcomes[-1])
        else:
            for case in runnable:
                outcomes.append(run(case))
                _progress(outcomes[-1])
    if args.wholesale:
        result["wholesale"] = wholesale(up, work, args.image_cache, args.timeout,
                                        args.boot_timeout)
    result["elements"] = [asdict(o) for o in outcomes]
    result["excluded"] = {c.element: c.exclude for c in excluded}
    result["seconds"] = round(time.monotonic() - started, 1)
    (work / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print()
    if runnable:
        for line in summary_lines(outcomes, excluded):
            print(line)
    if args.wholesale:
        print("wholesale (upstream's whole element tree first on ELEMENTS_PATH):")
        for name, entry in result["wholesale"].items():
            print(f"  {name}: {json.dumps(entry)}")
    print(f"dib-compat: dib {result['dib_commit']}, {result['started']}, {result['seconds']} s;"
          f" results in {work / 'results.json'}")
    return 0 if all(o.passed for o in outcomes) else 1


def _progress(outcome: Outcome) -> None:
    verdict = "ok" if outcome.passed else f"FAILED: {outcome.error}"
    print(f"[{outcome.seconds:6.1f} s] {outcome.element}: {verdict}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

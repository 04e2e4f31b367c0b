#!/usr/bin/env python3
"""Regenerate the real-failure corpus by provoking every failure for real.

Not run in CI: it needs root, Docker, the Debian mirror of this machine's apt
sources, qemu and (for a few recipes) PyPI. It is slow (a full run takes about
an hour on 2 cores) and runs recipes one at a time.

    sudo .venv/bin/python tests/corpus/provoke.py --list
    sudo .venv/bin/python tests/corpus/provoke.py RECIPE [RECIPE ...]   # or: all
    sudo .venv/bin/python tests/corpus/provoke.py --index               # rewrite index.yaml

A recipe is a bash script (recipes/<name>.sh next to this file). It runs with

    REPO       the checkout (CORPUS_REPO, default this one) whose matrix/dib/elements
               run (python -m matrix.cli, python -m dib with cwd REPO)
    PYTHON     this interpreter (the checkout's .venv: docker SDK, PyYAML)
    MIRROR     the Debian mirror URL (DIB_DISTRIBUTION_MIRROR, else this
               machine's apt sources) -- taken at run time, never stored
    WORK       an empty scratch directory under /tmp
    OUT        where it writes its logs: $OUT/<short-name>.log

and every log it writes that a case in cases.yaml names is redacted (the
mirror's host name becomes ``mirror.example``), cut when larger than 150 KB
(first 50 and last 400 lines kept, with a marker line) and copied to
failures/<id>/ or success/.  Cases whose log did not appear are reported.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = Path(os.environ.get("CORPUS_REPO", HERE.parent.parent))  # a clean export of the tool
RECIPES = HERE / "recipes"
CASES = HERE / "cases.yaml"
MAX_BYTES = 150 * 1024
HEAD, TAIL = 50, 400
REDACTED = "mirror.example"


def find_mirror() -> str:
    mirror = os.environ.get("DIB_DISTRIBUTION_MIRROR")
    if mirror:
        return mirror.rstrip("/")
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"(?:^deb\s+(?:\[[^]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            url = match.group(1)
            if url.rstrip("/").endswith("/debian"):
                return url.rstrip("/")
    sys.exit("no Debian mirror: set DIB_DISTRIBUTION_MIRROR")


# Registry host names an engine prints when a pull fails (never stored here by name).
REGISTRY_HOST = re.compile(r"(?<=https://)[^/\s\"]+(?=/v2/)|(?<=lookup )[^\s]+(?= on )")


def redact(text: str, hosts: list[str]) -> str:
    for host in hosts:
        text = text.replace(host, REDACTED)
        # Other http hosts of the mirror's domain (a security archive, say) go the same way.
        domain = ".".join(host.split(".")[-2:])
        if domain.count(".") == 1 and not host.replace(".", "").isdigit():
            text = re.sub(r"(?<=http://)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\." + re.escape(domain)
                          + r"\b", REDACTED, text)
    return REGISTRY_HOST.sub("registry.example", text)


def shorten(text: str) -> str:
    if len(text.encode()) <= MAX_BYTES:
        return text
    lines = text.splitlines(keepends=True)
    cut = len(lines) - HEAD - TAIL
    return "".join(lines[:HEAD] + [f"[... {cut} lines cut by corpus ...]\n"] + lines[-TAIL:])


def load_cases() -> list[dict]:
    return yaml.safe_load(CASES.read_text())


def run_recipe(name: str, cases: list[dict], mirror: str) -> list[str]:
    script = RECIPES / f"{name}.sh"
    work = Path(tempfile.mkdtemp(prefix=f"corpus-{name}-", dir="/tmp"))
    out = work / "logs"
    out.mkdir()
    env = dict(os.environ, REPO=str(REPO), PYTHON=sys.executable, MIRROR=mirror, WORK=str(work),
               OUT=str(out))
    print(f"== {name}", flush=True)
    subprocess.run(["bash", str(script)], env=env, cwd=work, check=False)
    missing = collect(name, cases, mirror, out)
    if os.environ.get("CORPUS_KEEP_WORK") != "1":
        subprocess.run(["umount", "-R", "-l", *[str(p) for p in work.glob("mnt*")]],
                       check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"   kept {work}", flush=True)
    return missing


def collect(name: str, cases: list[dict], mirror: str, out: Path) -> list[str]:
    """Copy the logs a recipe wrote to ``out`` into the corpus (redacted, cut)."""
    host = urllib.parse.urlparse(mirror).hostname or ""
    hosts = [h for h in {host, os.environ.get("CORPUS_REDACT", "")} if h]
    missing = []
    for case in cases:
        if case["recipe"] != name:
            continue
        source = out / case["source"]
        if not source.is_file() or not source.stat().st_size:
            missing.append(case["file"])
            continue
        dest = HERE / case["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(shorten(redact(source.read_text(errors="replace"), hosts)))
        print(f"   wrote {case['file']}", flush=True)
    return missing


def evidence_line(case: dict) -> str | None:
    """The first line of the case's log that its ``proof`` regex matches."""
    path = HERE / case["file"]
    if not case.get("proof") or not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        if re.search(case["proof"], line):
            return line.strip()
    return None


def write_index(cases: list[dict]) -> None:
    keys = ("file", "id", "kind", "host", "row", "tool", "how")
    entries = []
    for case in cases:
        entry = {k: case.get(k) for k in keys}
        if case.get("id"):
            entry["evidence"] = evidence_line(case)
        entries.append(entry)
    header = ("# Generated by provoke.py --index from cases.yaml: one entry per log.\n"
              "# id: the expected cause id (null: a successful run, no cause may match).\n"
              "# evidence (failures): the log line that proves the cause, in our judgement;\n"
              "# null where the log holds none (the cause is only in the tool's verdict).\n")
    (HERE / "index.yaml").write_text(
        header + yaml.safe_dump(entries, sort_keys=False, width=100, allow_unicode=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--index", action="store_true")
    parser.add_argument("--collect", metavar="LOGS_DIR",
                        help="do not run: copy RECIPE's logs from the $OUT of a kept run "
                             "(CORPUS_KEEP_WORK=1 keeps /tmp/corpus-RECIPE-*/)")
    args = parser.parse_args()
    cases = load_cases()
    if args.list:
        for script in sorted(RECIPES.glob("*.sh")):
            files = [c["file"] for c in cases if c["recipe"] == script.stem]
            print(f"{script.stem}: {', '.join(files)}")
        return 0
    if args.index:
        write_index(cases)
        return 0
    names = args.recipes
    if names == ["all"]:
        names = sorted(p.stem for p in RECIPES.glob("*.sh"))
    mirror = find_mirror()
    missing = []
    if args.collect:
        for name in names:
            missing += collect(name, cases, mirror, Path(args.collect))
        names = []
    for name in names:
        missing += run_recipe(name, cases, mirror)
    write_index(cases)
    for file in missing:
        print(f"MISSING: {file}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

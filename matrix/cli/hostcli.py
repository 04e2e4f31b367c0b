"""``dib-matrix hosts list`` and ``dib-matrix hosts build``.

Facts come from image labels and verdicts from build logs: what they print is
cleaned to one line each (``reports.sanitize``), so no build can drive the terminal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

from matrix.config.diagnostics import ConfigError
from matrix.config.hosts import BUNDLED_HOSTS_DIR, UnknownHost, load_hosts, select_hosts
from matrix.containers.engine import EngineError, connect
from matrix.hostgen.build import build_host
from matrix.hostgen.facts import load_facts
from matrix.hostgen.hostimage import image_names
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import Evidence, classify
from reports.sanitize import one_line

DEFAULT_LOG_DIR = Path("out/hostgen")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hosts = sub.add_parser("hosts", help="list or build the host container images")
    hosts.add_argument(
        "--hosts-dir",
        action="append",
        type=Path,
        metavar="DIR",
        help=f"directory of host YAML files (repeatable; default {BUNDLED_HOSTS_DIR})",
    )
    verbs = hosts.add_subparsers(dest="hosts_command", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="name, base, cached image and facts of every host")
    listing.set_defaults(func=cmd_list)
    build = verbs.add_parser("build", help="build host images (cached ones are skipped)")
    build.add_argument("patterns", nargs="*", metavar="NAME|GLOB", help="hosts (default: all)")
    build.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    build.add_argument(
        "--log-dir",
        type=Path,
        default=DEFAULT_LOG_DIR,
        help=f"per-host build logs go here (default {DEFAULT_LOG_DIR})",
    )
    build.add_argument(
        "--mirror",
        help="Debian mirror for bootstrap hosts (default: DIB_DISTRIBUTION_MIRROR, "
        "else this machine's apt sources)",
    )
    build.set_defaults(func=cmd_build)


def _load(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    return load_hosts(tuple(args.hosts_dir or (BUNDLED_HOSTS_DIR,)))


def cmd_list(args: argparse.Namespace) -> int:
    try:
        hosts = _load(args)
        client = connect()
    except (ConfigError, EngineError) as exc:
        print(f"dib-matrix: {exc}", file=sys.stderr)
        return 2
    rows = []
    for host in hosts.values():
        names = image_names(host)
        facts = load_facts(client, names.image)
        tag = names.image.rsplit(":", 1)[1]
        rows.append(
            [
                one_line(host.name),
                one_line(host.base.describe()),
                one_line(f"cached {tag}" if facts else f"not built ({tag})"),
                one_line(facts.summary()) if facts else "",
            ]
        )
    print(tabulate(rows, headers=["host", "base", "image", "facts"]))
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    try:
        chosen = select_hosts(_load(args), args.patterns)
        catalogue = load_catalogue()
        client = connect()
    except (ConfigError, UnknownHost, EngineError) as exc:
        print(f"dib-matrix: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for host in chosen:
        log_path = args.log_dir / f"{host.name}.log"
        print(one_line(f"{host.name}: {host.base.describe()} ..."), flush=True)
        try:
            outcome = build_host(client, host, log_path, rebuild=args.rebuild, mirror=args.mirror)
        except KeyboardInterrupt:
            # hostgen has already released its processes, mounts and containers.
            print(f"{host.name}: interrupted (log: {log_path})", file=sys.stderr)
            return 130
        if outcome.ok:
            print(one_line(outcome.one_line()), flush=True)
        else:
            verdict = classify(Evidence(host.name, "hostgen", (outcome.evidence,), log_path,
                                        hint=outcome.hint), catalogue)
            print(f"{host.name}: failed ({one_line(verdict.category.legend)}): "
                  f"{one_line(verdict.evidence)} (log: {one_line(str(log_path))})", flush=True)
        if outcome.facts is not None:
            print(f"  facts: {one_line(outcome.facts.summary())}")
        failed += not outcome.ok
    if failed:
        print(f"{failed} of {len(chosen)} host(s) failed", file=sys.stderr)
    return 1 if failed else 0

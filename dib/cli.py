"""``dib-build``: the command line, compatible with disk-image-create's common flags."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import List, Optional

from dib import __version__, failure
from dib.build import BuildOptions, build
from dib.errors import DibError, Interrupted
from dib.outputs import SUPPORTED_TYPES, parse_size, parse_types

LOG = logging.getLogger("dib")
DEFAULT_CACHE = Path.home() / ".cache" / "image-create"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dib-build",
        description="Build an OS image from elements (diskimage-builder compatible).",
        epilog="Environment: DIB_RELEASE, DIB_DISTRIBUTION_MIRROR, ELEMENTS_PATH, DIB_* are "
        "passed to every element.",
    )
    parser.add_argument("elements", nargs="+", metavar="ELEMENT", help="elements to build")
    parser.add_argument(
        "-o",
        dest="output",
        default="image",
        help="output file name without extension (default: image)",
    )
    parser.add_argument(
        "-t",
        dest="types",
        default="qcow2",
        help=f"comma separated output types: {', '.join(SUPPORTED_TYPES)} (default: qcow2)",
    )
    parser.add_argument(
        "-a",
        dest="arch",
        default="amd64",
        help="architecture (default: amd64; x86_64 and aarch64 are accepted); a foreign "
        "one, such as arm64 on an amd64 machine, runs the image's programs through the "
        "kernel's binfmt handler (qemu-user-static) and is refused at once without one",
    )
    parser.add_argument(
        "-x", dest="trace", action="store_true", help="trace every hook script (bash -x)"
    )
    parser.add_argument(
        "-n", dest="skip_base", action="store_true", help="do not add the default 'base' element"
    )
    parser.add_argument(
        "-p", dest="packages", default="", help="comma separated extra packages to install"
    )
    parser.add_argument(
        "-u",
        dest="uncompressed",
        action="store_true",
        help="do not compress qcow2 images (compressed ones: DIB_QCOW2_COMPRESSION=zstd, "
        "the default, needs QEMU >= 5.1 to read; zlib for any qemu)",
    )
    parser.add_argument(
        "--image-size",
        help="filesystem size: a number of GiB or 512M, 2G, ...; "
        "default: just large enough for the tree",
    )
    parser.add_argument("--checksum", action="store_true", help="write a .sha256 beside each image")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="use only cached base trees; never touch the network for them",
    )
    parser.add_argument("--logfile", help="also write the build log to this file")
    parser.add_argument(
        "--image-cache",
        default=str(DEFAULT_CACHE),
        help=f"cache directory (default: {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--install-type",
        help="default install type of elements with <element>-<type>-install hooks "
        "(DIB_DEFAULT_INSTALLTYPE; default: source)",
    )
    parser.add_argument(
        "--no-tmpfs", action="store_true", help="build on disk instead of in a tmpfs"
    )
    parser.add_argument("--debug", action="store_true", help="log every command and tracebacks")
    parser.add_argument("--version", action="version", version=f"dib-build {__version__}")
    return parser


def options_from_args(args: argparse.Namespace, argv: Optional[List[str]] = None) -> BuildOptions:
    return BuildOptions(
        elements=tuple(args.elements),
        output=Path(args.output).absolute(),
        types=tuple(parse_types(args.types)),
        arch=args.arch,
        trace=args.trace,
        skip_base=args.skip_base,
        packages=tuple(p.strip() for p in args.packages.split(",") if p.strip()),
        image_size=parse_size(args.image_size) if args.image_size else None,
        checksum=args.checksum,
        offline=args.offline,
        image_cache=Path(args.image_cache).absolute(),
        tmpfs=not args.no_tmpfs,
        compress=not args.uncompressed,
        args=tuple(sys.argv[1:] if argv is None else argv),
        install_type=args.install_type,
    )


def setup_logging(logfile: Optional[str], debug: bool) -> None:
    formatter = logging.Formatter("%(asctime)s.%(msecs)03d | %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile))
    LOG.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG if debug else logging.INFO)
    LOG.propagate = False


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _failed(report: failure.Reporter, err: BaseException, message: str, code: int) -> int:
    """Log the failure record, write it beside the image, then dib's final ERROR line."""
    report.report(err, message)
    LOG.error("ERROR: %s", message)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.logfile, args.debug)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    report = failure.Reporter(Path(args.output).absolute(), LOG)  # removes a stale record
    try:
        opts = options_from_args(args, argv)
        result = build(opts, os.environ)
    except DibError as err:
        if args.debug:
            LOG.exception("build failed")
        return _failed(report, err, str(err), err.exit_code)
    except (KeyboardInterrupt, Interrupted) as err:
        message = f"interrupted ({err or 'SIGINT'}); mounts released, build tree removed"
        return _failed(report, err, message, 130)
    except Exception as err:  # a bug in dib, or the machine (OSError): still one record
        traceback.print_exc()
        return _failed(report, err, f"internal error: {type(err).__name__}: {err}", 1)
    LOG.info(
        "build finished in %.1f s: %s", result.seconds, ", ".join(str(p) for p in result.images)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Host facts: what a host image offers dib, probed once when the image is built.

Stored as a JSON label on the host image, so a preflight can read them without
starting a container (``load_facts``).

One fact is not the image's: which foreign architectures the kernel runs through a
registered binfmt_misc handler (``binfmt``). Handlers are kernel-wide, every container
of the engine shares them, and a container does not see ``/proc/sys/fs/binfmt_misc``
(it is not mounted in its /proc); they are read on the machine that runs the engine,
each time facts are taken (built or loaded), never trusted from an old label: a handler
registered after the host image was built counts at once. When the engine is not on
this machine (``DOCKER_HOST`` names another one) they are unknown (``None``) and no
preflight judges them; dib's own preflight in the cell still fails fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from dib import arch as arches

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
PROBE_SCRIPT = TEMPLATES_DIR / "facts-probe.sh"
FACTS_LABEL = "org.dib-matrix.facts"
FACTS_VERSION = 1
PROBED_TOOLS = (
    "debootstrap",
    "mmdebstrap",
    "dnf",
    "yum",
    "zypper",
    "runuser",
    "qemu-img",
    "tox",
    "python3",
)


class FactsError(ValueError):
    """Probe output or a stored facts label could not be understood."""


@dataclass(frozen=True)
class HostFacts:
    """What one host image provides, as found by the probe."""

    tools: tuple[str, ...]  # the PROBED_TOOLS present on PATH, sorted
    debootstrap_scripts: tuple[str, ...]  # names under /usr/share/debootstrap/scripts, sorted
    arch: str
    python_version: str | None = None
    tox_version: str | None = None
    os_id: str | None = None
    os_version: str | None = None
    # (arch, handler) for each foreign architecture a usable (enabled, fix-binary) binfmt
    # handler of the engine's kernel runs, sorted; None: not known (see the module doc)
    binfmt: tuple[tuple[str, str], ...] | None = None

    def has_tool(self, tool: str) -> bool:
        return tool in self.tools

    def runs_arch(self, arch: str) -> bool | None:
        """Whether the host's containers run programs of ``arch`` (natively or through a
        binfmt handler); None when the handlers are not known."""
        wanted = arches.normalise(arch)
        if arches.native(wanted, arches.normalise(self.arch)):
            return True
        if self.binfmt is None:
            return None
        return any(found == wanted for found, _ in self.binfmt)

    def has_debootstrap_script(self, release: str) -> bool:
        return release in self.debootstrap_scripts

    def summary(self) -> str:
        parts = [
            self.arch,
            f"python {self.python_version or '-'}",
            f"tox {self.tox_version or '-'}",
        ]
        tools = [t for t in self.tools if t not in ("python3", "tox")]
        parts.append(" ".join(tools) if tools else "no tools")
        if self.debootstrap_scripts:
            parts.append(f"{len(self.debootstrap_scripts)} debootstrap scripts")
        if self.binfmt is not None:  # the handlers' names are in the JSON
            arches = " ".join(arch for arch, _ in self.binfmt)
            parts.append(f"binfmt: {arches or 'no handlers'}")
        return ", ".join(parts)

    def to_json(self) -> str:
        data = asdict(self)
        data["version"] = FACTS_VERSION
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> HostFacts:
        try:
            data: Any = json.loads(text)
            if data.pop("version", None) != FACTS_VERSION:
                raise FactsError("facts were stored by another dib-matrix version")
            data["tools"] = tuple(data["tools"])
            data["debootstrap_scripts"] = tuple(data["debootstrap_scripts"])
            if data.get("binfmt") is not None:
                data["binfmt"] = tuple((str(a), str(n)) for a, n in data["binfmt"])
            return cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise FactsError(f"unreadable host facts: {exc}") from exc


def probe_command() -> list[str]:
    """The command a probe container runs; prints ``key=value`` lines."""
    return ["/bin/sh", "-c", PROBE_SCRIPT.read_text(encoding="utf-8")]


def _first_word(text: str) -> str | None:
    words = text.split()
    return words[0] if words else None


def parse_probe_output(text: str) -> HostFacts:
    tools: set[str] = set()
    scripts: set[str] = set()
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if key == "tool" and value in PROBED_TOOLS:
            tools.add(value)
        elif key == "debootstrap_script" and value:
            scripts.add(value)
        elif key in ("arch", "python", "tox", "os_id", "os_version"):
            values[key] = value.strip()
    if "arch" not in values:
        raise FactsError("probe printed no architecture; did it run at all?")
    return HostFacts(
        tools=tuple(sorted(tools)),
        debootstrap_scripts=tuple(sorted(scripts)),
        arch=values["arch"],
        python_version=values.get("python") or None,
        tox_version=_first_word(values.get("tox", "")),
        os_id=values.get("os_id") or None,
        os_version=values.get("os_version") or None,
    )


def facts_from_labels(labels: Mapping[str, str] | None) -> HostFacts | None:
    """Facts stored on an image, or None if it has none (or unreadable ones)."""
    text = (labels or {}).get(FACTS_LABEL)
    if not text:
        return None
    try:
        return HostFacts.from_json(text)
    except FactsError:
        return None


def engine_is_local(env: Mapping[str, str] | None = None) -> bool:
    """Whether the engine runs on this machine (so shares this kernel's handlers)."""
    host = (os.environ if env is None else env).get("DOCKER_HOST", "")
    return not host or host.startswith("unix://")


def machine_binfmt(directory: Path | None = None, env: Mapping[str, str] | None = None
                   ) -> tuple[tuple[str, str], ...] | None:
    """(arch, handler) of every usable binfmt handler of this machine's kernel; None when
    the engine is elsewhere. ``directory``/``env``: another binfmt_misc (tests)."""
    if not engine_is_local(env):
        return None
    found = arches.handlers_by_arch(arches.registered_handlers(directory, env))
    return tuple(sorted((arch, h.name) for arch, h in found.items() if h.usable))


def with_machine_binfmt(facts: HostFacts, binfmt: tuple[tuple[str, str], ...] | None = None,
                        ) -> HostFacts:
    """``facts`` with the engine's binfmt handlers as they are now (or ``binfmt``)."""
    return replace(facts, binfmt=machine_binfmt() if binfmt is None else binfmt)


def load_facts(client: Any, image_ref: str) -> HostFacts | None:
    """Facts of a built host image (``client``: a ``docker.DockerClient``); None if absent."""
    import docker.errors

    try:
        image = client.images.get(image_ref)
    except docker.errors.ImageNotFound:
        return None
    facts = facts_from_labels(image.labels)
    return None if facts is None else with_machine_binfmt(facts)

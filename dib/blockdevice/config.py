"""Which block-device layout a build uses, found as disk-image-create finds it.

In order, the first that gives one wins:

1. ``DIB_BLOCK_DEVICE_CONFIG``: YAML text, ``file://PATH`` or a path;
2. ``block-device-<ARCH>.yaml``, else ``block-device-default.yaml``, in one of the build's
   elements (diskimage-builder's block-device-mbr/gpt/efi ship these), dependencies first;
3. ``DIB_BLOCK_DEVICE`` (mbr, gpt, efi: set by a block-device-* element or dib's vm
   element) names one of the layouts dib's own vm element ships.

No layout at all means no partitioned disk: a disk output is then the bare root
filesystem, as diskimage-builder's fallback layout makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from dib import safefile
from dib.elements import ELEMENT_FILE_LIMIT, read_element_file
from dib.errors import ConfigError

CONFIG_VAR = "DIB_BLOCK_DEVICE_CONFIG"
KIND_VAR = "DIB_BLOCK_DEVICE"
DEFAULT_FILE = "block-device-default.yaml"
# dib's vm element ships one layout per DIB_BLOCK_DEVICE kind: elements/vm/layouts/KIND.yaml.
BUNDLED_LAYOUTS = Path("vm") / "layouts"
# diskimage-builder reads one file for both names of 64-bit little-endian POWER.
ARCH_FILE_NAMES = {"ppc64le": "ppc64el"}


@dataclass(frozen=True)
class LayoutSource:
    text: str
    origin: str  # for messages: a path, "DIB_BLOCK_DEVICE_CONFIG" or "mbr (mbr.yaml)"


def from_config(value: str) -> Optional[LayoutSource]:
    """``DIB_BLOCK_DEVICE_CONFIG``'s layout, or None when it is empty."""
    config = value.strip()
    if not config:
        return None
    path: Optional[Path] = None
    if config.startswith("file://"):
        path = Path(config[len("file://") :])
    elif "\n" not in config and Path(config).is_file():
        path = Path(config)
    if path is None:
        return LayoutSource(config, CONFIG_VAR)
    return LayoutSource(read_layout(path, CONFIG_VAR), str(path))


def read_layout(path: Path, what: str) -> str:
    """A layout file given by path: a regular UTF-8 file of at most ELEMENT_FILE_LIMIT
    bytes, else ConfigError saying so for ``what`` (never a hang on a FIFO)."""
    try:
        return safefile.read_text(path, ELEMENT_FILE_LIMIT)
    except (OSError, ValueError) as err:  # ValueError: not UTF-8
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise ConfigError(f"{what}: cannot read {path}: {reason}") from None


def from_elements(element_dirs: Sequence[Path], arch: str) -> Optional[LayoutSource]:
    """The first element's ``block-device-<ARCH>.yaml`` or ``block-device-default.yaml``."""
    arch_file = f"block-device-{ARCH_FILE_NAMES.get(arch, arch)}.yaml"
    for directory in element_dirs:
        for name in (arch_file, DEFAULT_FILE):
            path = directory / name
            text = read_element_file(directory.name, path, ConfigError)
            if text is not None:
                return LayoutSource(text, str(path))
    return None


def from_kind(kind: str, bundled_elements: Path) -> Optional[LayoutSource]:
    """The layout dib's vm element ships for ``kind`` (mbr, gpt, efi); None when unset."""
    kind = kind.strip()
    if not kind:
        return None
    directory = bundled_elements / BUNDLED_LAYOUTS
    path = directory / f"{kind}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ConfigError(
            f"{KIND_VAR}={kind}: no such layout (known: {', '.join(known) or 'none'}); "
            f"or set {CONFIG_VAR} to a layout"
        )
    return LayoutSource(read_layout(path, f"{KIND_VAR}={kind}"), f"{kind} ({path.name})")


def find_layout(
    env: Mapping[str, str], element_dirs: Sequence[Path], arch: str, bundled_elements: Path
) -> Optional[LayoutSource]:
    """The build's layout (see the module docstring), or None for a bare filesystem."""
    return (
        from_config(env.get(CONFIG_VAR, ""))
        or from_elements(element_dirs, arch)
        or from_kind(env.get(KIND_VAR, ""), bundled_elements)
    )

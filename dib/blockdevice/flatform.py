"""diskimage-builder's flat layout form, turned into the nested form dib reads.

A layout may give ``mkfs``, ``mount`` and ``fstab`` as top-level nodes tied together
by ``base`` (an mkfs names its partition, a mount its mkfs, an fstab its mount)
instead of nesting them inside the partition. Both mean the same disk; this moves
each flat node into the place the nested form has for it, so the one validator
(``layout``) sees one shape. Nodes it cannot place are left where they are and
reported (with the node's key and name) and dropped.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

FLAT_KINDS = ("mkfs", "mount", "fstab")
# diskimage-builder's names for nodes given without one: kind + "_" + base.
NAME_PREFIX = {"mkfs": "mkfs_", "mount": "mount_", "fstab": "fstab_"}

Problem = Tuple[str, str]  # (key path, message)


def _node(item: Any) -> Optional[Tuple[str, Dict[str, Any]]]:
    if isinstance(item, dict) and len(item) == 1:
        kind, body = next(iter(item.items()))
        if str(kind) in FLAT_KINDS and isinstance(body, dict):
            return str(kind), body
    return None


def _name(kind: str, body: Dict[str, Any]) -> str:
    return str(body.get("name") or f"{NAME_PREFIX[kind]}{body.get('base', '')}")


def _without(body: Dict[str, Any], *keys: str) -> Dict[str, Any]:
    return {k: v for k, v in body.items() if k not in keys}


def nest(data: Any) -> Tuple[Any, List[Problem]]:
    """``data`` with flat mkfs/mount/fstab nodes moved into their partitions."""
    if not isinstance(data, list):
        return data, []
    flat = [(index, found) for index, item in enumerate(data) if (found := _node(item))]
    if not flat:
        return data, []
    partitions: Dict[str, Dict[str, Any]] = {}
    for item in data:
        body = item.get("partitioning") if isinstance(item, dict) else None
        for part in (body or {}).get("partitions") or []:
            if isinstance(part, dict) and "name" in part:
                partitions[str(part["name"])] = part
    problems: List[Problem] = []
    by_name: Dict[str, Dict[str, Any]] = {}  # mkfs / mount name -> its nested body
    for kind in FLAT_KINDS:  # parents first: a mount needs its mkfs placed
        for _index, (node_kind, body) in flat:
            if node_kind != kind:
                continue
            base = str(body.get("base", ""))
            name = _name(kind, body)
            if kind == "mkfs":
                parent = partitions.get(base)
                what = "partition"
            else:
                parent = by_name.get(base)
                what = "mkfs" if kind == "mount" else "mount"
            if parent is None:
                problems.append(
                    (kind, f"'{name}': base '{base}' is not a {what} of this layout "
                     "(dib places flat nodes on partitions only: no LVM or RAID)")
                )
                continue
            if kind in parent:
                problems.append((kind, f"'{name}': '{base}' already has a {kind}"))
                continue
            nested = _without(body, "base", "name") if kind != "mkfs" else _without(body, "base")
            parent[kind] = nested
            by_name[name] = nested
    flat_indexes = {index for index, _ in flat}
    return [item for index, item in enumerate(data) if index not in flat_indexes], problems

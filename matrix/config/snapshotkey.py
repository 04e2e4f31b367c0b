"""The ``snapshot:`` key of a matrix (and of a target): which repository state a run uses.

- ``snapshot: record`` — build against the live mirror and save the run's repository
  state as a snapshot at its end (named after the run);
- ``snapshot: NAME`` — replay a saved snapshot (a name, or the id of the run it was
  recorded from): every file is served from the snapshot store, nothing from the mirror;
- ``snapshot: {url: URL, timestamp: 20240101T000000Z}`` — another snapshot service laid
  out like snapshot.debian.org (``URL/archive/debian/<timestamp>/``), or without a
  timestamp any mirror URL in Debian's archive layout (an aptly or reprepro publish).
  ``record: true`` in the mapping records it as well.

Apt's Release expiry check is waived for a pinned snapshot and a snapshot service (their
Release files are old by design); their signatures are still checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from matrix.config.schema import Invalid, shown
from results.names import is_run_id

RECORD = "record"
TIMESTAMP_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")  # snapshot.debian.org's form
URL_RE = re.compile(r"https?://[^\s/?#]+(?:/[^\s?#]*)?")
SERVICE_KEYS = ("url", "timestamp", "record")


@dataclass(frozen=True)
class SnapshotService:
    """A snapshot service (or a fixed mirror) the run's Debian archive is taken from."""

    url: str
    timestamp: str | None = None

    @property
    def mirror(self) -> str:
        """The archive URL: ``<url>/archive/debian/<timestamp>`` with a timestamp."""
        base = self.url.rstrip("/")
        return f"{base}/archive/debian/{self.timestamp}" if self.timestamp else base

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "timestamp": self.timestamp, "mirror": self.mirror}


@dataclass(frozen=True)
class SnapshotSetting:
    """What the run does about repository state (the default: live, nothing saved)."""

    record: bool = False
    pinned: str | None = None  # a snapshot's name, or the run it was recorded from
    service: SnapshotService | None = None

    @property
    def waives_valid_until(self) -> bool:
        return self.pinned is not None or self.service is not None

    def to_json(self) -> dict[str, Any]:
        return {"record": self.record, "pinned": self.pinned,
                "service": self.service.to_json() if self.service else None}


def parse_service(value: Any) -> SnapshotService:
    """``{url: ..., timestamp: ...}`` (the mapping form's url and timestamp)."""
    if not isinstance(value, dict):
        raise Invalid(f"must be a mapping with url (and timestamp), got {shown(value)}")
    unknown = [key for key in value if key not in SERVICE_KEYS]
    if unknown:
        raise Invalid(f"unknown key {shown(unknown[0])}; known: {', '.join(SERVICE_KEYS)}")
    url = value.get("url")
    if not isinstance(url, str) or not URL_RE.fullmatch(url):
        raise Invalid(f"url must be an http(s) URL, got {shown(url)}")
    timestamp = value.get("timestamp")
    if timestamp is not None and (not isinstance(timestamp, str)
                                  or not TIMESTAMP_RE.fullmatch(timestamp)):
        raise Invalid("timestamp must look like 20240101T000000Z (snapshot.debian.org's "
                      f"form), got {shown(timestamp)}")
    return SnapshotService(url, timestamp)


def parse_snapshot(value: Any, reader: Any = None, path: Any = ()) -> SnapshotSetting:
    """The matrix key's (and ``run --snapshot``'s) value."""
    if value is None:
        return SnapshotSetting()
    if isinstance(value, str):
        if value == RECORD:
            return SnapshotSetting(record=True)
        if not is_run_id(value):
            raise Invalid(f"must be 'record', a snapshot name or a run id, got {shown(value)}")
        return SnapshotSetting(pinned=value)
    if isinstance(value, dict):
        record = value.get("record", False)
        if not isinstance(record, bool):
            raise Invalid(f"record must be true or false, got {shown(record)}")
        return SnapshotSetting(record=record, service=parse_service(value))
    raise Invalid("must be 'record', a snapshot name, or {url: URL, timestamp: STAMP}, "
                  f"got {shown(value)}")

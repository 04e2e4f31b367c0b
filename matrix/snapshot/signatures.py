"""Whether a saved snapshot's suites are still signed as their archive signed them.

A replay serves the InRelease files exactly as the mirror published them, so the cells'
apt and debootstrap check them against their own keyrings. Before a pinned run starts,
the orchestrator checks them too, against Debian's keyring: a store edited since (or a
blob gone bad) is said before any cell, not discovered in every cell's log.
"""

from __future__ import annotations

from pathlib import Path

from matrix.snapshot.manifest import Snapshot, StoreError
from matrix.snapshot.release import DEFAULT_KEYRING, SignatureError, verify
from matrix.snapshot.store import Store

INRELEASE_LIMIT = 16 << 20  # as release.parse_release reads it


def signature_problems(store: Store, snapshot: Snapshot,
                       keyring: Path | str = DEFAULT_KEYRING) -> list[str]:
    """One line per suite whose InRelease is absent from the store or does not verify
    against ``keyring`` (a suite saved with a Release only is not checked here)."""
    problems = []
    for uri, archive in sorted(snapshot.archives.items()):
        for name, suite in sorted(archive.suites.items()):
            if suite.inrelease is None:
                continue
            try:
                with store.open_blob(suite.inrelease) as stream:
                    data = stream.read(INRELEASE_LIMIT)
                verify(data, keyring)
            except (StoreError, SignatureError, OSError) as err:
                problems.append(f"{uri} {name}: {err}")
    return problems

"""What a cell hands back when it ends: one typed report for every kind of cell.

Cells report what they saw, never a category: the verdict stage
(:mod:`matrix.verdict.classify`) names the cause from the report's evidence, log, dib's
failure record and free space, with the catalogue alone. The scheduler adds the
timings; the run stores the report in ``results.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results.model import Artifact, Category, ImageCheck, State


@dataclass(frozen=True)
class CellReport:
    state: State
    evidence: tuple[str, ...] = ()  # lines the cell saw itself (engine message, preflight, ...)
    reason: str | None = None  # why skipped or excluded; a note on success ("cached")
    log: Path | None = None
    artifacts: tuple[Artifact, ...] = ()
    checks: tuple[ImageCheck, ...] = ()  # image verification of a build
    reproducer: str | None = None
    key: str | None = None  # content key for reuse
    reused: bool = False
    hint: str | None = None  # a catalogue id the cell knows applies (timeout, engine error)
    record: Mapping[str, Any] | None = None  # dib's own failure record
    free_bytes: Mapping[str, int | None] = field(default_factory=dict)
    node: str | None = None  # the swarm node it ran on
    # Set by the scheduler:
    attempts: int = 1
    started: str | None = None
    duration: float | None = None
    retry: str | None = None  # why it was or was not tried again (matrix.run.retry)
    # Set by the verdict stage:
    category: Category | None = None
    verdict: str | None = None  # the evidence line that names the category

    def replace(self, **changes: Any) -> CellReport:
        return dataclasses.replace(self, **changes)

    @property
    def needs_verdict(self) -> bool:
        """A failure, or a skip with a cause, whose category is not named yet."""
        if self.category is not None:
            return False
        return self.state.is_failure or (self.state is State.SKIPPED and bool(self.evidence))

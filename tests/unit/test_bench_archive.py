"""The benchmark's archive figure: its arithmetic, and the simulation agreeing with it."""

from __future__ import annotations

from bench import archivebench
from bench.archivebench import LOG_BYTES, Build, expected_bytes, figures, simulate

MiB = 1 << 20


def test_without_retention_every_night_stays_with_it_only_the_newest():
    builds = [Build("h", "a", 100 * MiB), Build("h", "b", 50 * MiB, succeeds=False)]
    per_night = 100 * MiB + 2 * LOG_BYTES
    assert expected_bytes(builds, 30, None) == 30 * per_night
    assert expected_bytes(builds, 30, 7) == 7 * per_night
    assert expected_bytes(builds, 5, 7) == 5 * per_night


def test_the_simulation_through_the_archive_agrees_with_the_arithmetic(tmp_path):
    builds = [Build("h1", "a", 300 * MiB), Build("h2", "a", 200 * MiB),
              Build("h2", "b", 10 * MiB, succeeds=False)]
    for keep in (None, 3):
        measured = simulate(tmp_path / str(keep), builds, 8, keep)
        expected = expected_bytes(builds, 8, keep)
        assert expected <= measured <= expected * 1.02, (keep, measured, expected)
    rows = figures(builds, {"without": expected_bytes(builds, 30, None),
                            "with": expected_bytes(builds, 30, 7)}, "test sizes")
    assert rows[-1].value == 7 / 30 and "agrees with" in rows[-1].note


def test_the_default_matrix_builds_are_sized_without_a_real_run():
    builds, source = archivebench.default_builds(None)
    assert len(builds) >= 10 and all(b.image_bytes >= 100 * MiB for b in builds)
    assert source.startswith("documented image sizes")

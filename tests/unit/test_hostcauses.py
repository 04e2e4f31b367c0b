"""matrix.hostcauses: one clear line for a failed hostgen."""

import pytest

from matrix.hostcauses import HostgenCause, classify_log

CASES = [
    (
        ["Reading package lists...", "E: Unable to locate package python3-yamll"],
        HostgenCause.PACKAGE_NOT_FOUND,
        "E: Unable to locate package python3-yamll",
    ),
    (
        ["E: Package 'tox' has no installation candidate"],
        HostgenCause.PACKAGE_NOT_FOUND,
        "E: Package 'tox' has no installation candidate",
    ),
    (
        ["No match for argument: qemu-utils", "Error: Unable to find a match: qemu-utils"],
        HostgenCause.PACKAGE_NOT_FOUND,
        "No match for argument: qemu-utils",
    ),
    (
        ["No provider of 'gdisk' found."],
        HostgenCause.PACKAGE_NOT_FOUND,
        "No provider of 'gdisk' found",
    ),
    (
        [
            "I: Retrieving InRelease",
            "E: Failed getting release file http://m.invalid/debian/dists/x/Release",
        ],
        HostgenCause.MIRROR_UNREACHABLE,
        "Failed getting release file http://m.invalid/debian/dists/x/Release",
    ),
    (
        [
            "W: Failed to fetch http://m.invalid/debian/dists/sid/InRelease"
            "  Temporary failure resolving 'm.invalid'"
        ],
        HostgenCause.MIRROR_UNREACHABLE,
        "Temporary failure resolving 'm.invalid'",
    ),
    (
        ["E: No such script: /usr/share/debootstrap/scripts/forky"],
        HostgenCause.NO_SUCH_SCRIPT,
        "No such script: /usr/share/debootstrap/scripts/forky",
    ),
]


@pytest.mark.parametrize("lines, cause, evidence", CASES)
def test_known_causes(lines, cause, evidence):
    diagnosis = classify_log(lines, HostgenCause.BUILD_FAILED, "")
    assert (diagnosis.cause, diagnosis.evidence) == (cause, evidence)
    assert diagnosis.one_line() == f"{cause.legend}: {evidence}"
    assert "\n" not in diagnosis.one_line()


def test_package_cause_wins_over_a_later_fetch_error():
    lines = ["Err:1 http://m.invalid x", "E: Unable to locate package foo", "E: Failed to fetch x"]
    assert (
        classify_log(lines, HostgenCause.BUILD_FAILED, "").cause is HostgenCause.PACKAGE_NOT_FOUND
    )


def test_unknown_falls_back_to_last_error_line():
    lines = ["doing things", "E: something odd happened", "cleaning up"]
    diagnosis = classify_log(lines, HostgenCause.SETUP_FAILED, "")
    assert diagnosis.cause is HostgenCause.SETUP_FAILED
    assert diagnosis.evidence == "E: something odd happened"


def test_expired_snapshot_mirror():
    line = (
        "E: Release file for http://m.invalid/debian/dists/sid/InRelease is expired "
        "(invalid since 15d 19h 1min 56s). Updates for this repository will not be applied."
    )
    diagnosis = classify_log([line], HostgenCause.BUILD_FAILED, "")
    assert diagnosis.cause is HostgenCause.MIRROR_EXPIRED
    assert diagnosis.evidence == (
        "Release file for http://m.invalid/debian/dists/sid/InRelease is expired "
        "(invalid since 15d 19h 1min 56s)"
    )


def test_no_error_line_uses_the_given_evidence():
    lines = ["Removing intermediate container 887cf8ef2342"]
    diagnosis = classify_log(lines, HostgenCause.BUILD_FAILED, "RUN step exited with 100")
    assert diagnosis.evidence == "RUN step exited with 100"


def test_every_cause_has_a_legend():
    for cause in HostgenCause:
        assert cause.legend
    assert HostgenCause.BASE_IMAGE_UNAVAILABLE.value == "base-image-unavailable"

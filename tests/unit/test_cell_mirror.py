"""Which build cells get the machine's Debian mirror as DIB_DISTRIBUTION_MIRROR."""

from pathlib import Path

from matrix.run.cells import debootstraps

ELEMENTS = (Path(__file__).resolve().parents[2] / "elements",)


def test_debootstrapping_targets_get_the_debian_mirror():
    assert debootstraps(("debian-minimal",), ELEMENTS)
    assert debootstraps(("debian-minbase", "vm"), ELEMENTS)


def test_rpm_targets_do_not():
    for element in ("fedora-minimal", "centos-minimal", "opensuse-minimal"):
        assert not debootstraps((element,), ELEMENTS), element


def test_an_unresolvable_target_keeps_the_mirror(tmp_path):
    # dib reports the missing element itself; the environment stays as before.
    assert debootstraps(("no-such-element",), ELEMENTS)
    assert debootstraps(("debian-minimal",), (tmp_path,))

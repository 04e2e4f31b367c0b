"""The benchmark's profile lines read from dib's log: hooks, the image, and the tree cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.steps import cache_profile, dib_slowest, one_line, slowest_steps, tree_cache

PHASES_CACHED = "root.d extra-data.d pre-install.d install.d post-install.d"
KEY = "0123456789abcdef"


def _log(tmp_path: Path, *lines: str, start: float = 0.0) -> Path:
    """A dib log: each entry '<seconds> <text>' becomes a time-stamped line."""
    out = []
    for entry in lines:
        seconds, text = entry.split(" ", 1)
        whole, fraction = divmod(start + float(seconds), 1)
        minutes, secs = divmod(int(whole), 60)
        out.append(f"2026-12-07 09:{minutes:02d}:{secs:02d}.{int(fraction * 1000):03d} | {text}")
    path = tmp_path / "dib.log"
    path.write_text("\n".join(out) + "\n")
    return path


def _warm_hit(tmp_path: Path) -> Path:
    return _log(
        tmp_path,
        "0 dib-build debian-minimal",
        f"1.6 tree cache: hit {KEY} ({PHASES_CACHED} from the cache, restored in 1.4 s)",
        "1.7 ---- phase post-root.d: 1 script(s)",
        "1.7 running post-root.d/10-a",
        "2.0 finished post-root.d/10-a in 0.3 s",
        "2.0 ---- phase finalise.d: 2 script(s)",
        "2.5 finished finalise.d/01-b in 0.5 s",
        "3.5 finished finalise.d/50-c in 1.0 s",
        "3.5 ---- phase cleanup.d: 1 script(s)",
        "3.6 finished cleanup.d/90-dpkg-cleanup in 0.1 s",
        "5.0 ext4 filesystem image.raw: 848 MiB",
        "7.5 wrote /x/image.qcow2 (249 MiB)",
        "7.5 build finished in 7.5 s: /x/image.qcow2",
    )


def test_a_hit_is_one_restored_step_and_the_phases_that_still_ran(tmp_path):
    steps = slowest_steps(_warm_hit(tmp_path))
    assert f"    1.4 s  tree cache: restored ({PHASES_CACHED} from the cache)" in steps
    assert steps[-1] == "still ran: post-root.d finalise.d cleanup.d"
    assert steps[0] == "    7.5 s  whole build"


def test_the_warm_profile_says_what_came_from_the_cache_and_what_ran(tmp_path):
    assert cache_profile(_warm_hit(tmp_path)) == [
        f"from the cache: {PHASES_CACHED} (restored in 1.4 s, key {KEY})",
        "still ran: post-root.d 0.3 s, finalise.d 1.5 s, cleanup.d 0.1 s",
        "whole build: 7.5 s",
    ]


def test_a_miss_names_its_reason_and_what_it_stored(tmp_path):
    log = _log(tmp_path,
               "0 dib-build debian-minimal",
               f"0.1 tree cache: miss {KEY}: no tree for this key",
               "0.1 ---- phase root.d: 2 script(s)",
               "9.0 finished root.d/08-debootstrap in 8.9 s",
               "9.0 ---- phase install.d: 1 script(s)",
               "20.0 finished install.d/01-package-installs in 11.0 s",
               f"22.1 tree cache: stored {KEY} (812 MiB in 2.1 s)",
               "22.2 ---- phase cleanup.d: 1 script(s)",
               "22.3 finished cleanup.d/90-dpkg-cleanup in 0.1 s")
    profile = cache_profile(log)
    assert profile[0] == ("from the cache: nothing, a miss (no tree for this key); "
                          "stored 812 MiB in 2.1 s")
    assert profile[1] == "still ran: root.d 8.9 s, install.d 11.0 s, cleanup.d 0.1 s"
    steps = slowest_steps(log)
    assert "    2.1 s  tree cache: stored (812 MiB)" in steps
    assert steps[-1] == "tree cache: miss (no tree for this key), every phase ran"


def test_off_and_absent_say_so(tmp_path):
    off = _log(tmp_path, "0 dib-build x", "0.1 tree cache: off: DIB_TREE_CACHE=0",
               "0.2 ---- phase root.d: 1 script(s)", "1.0 finished root.d/a in 0.8 s")
    assert cache_profile(off)[0] == "from the cache: nothing, the cache is off (DIB_TREE_CACHE=0)"
    plain = _log(tmp_path, "0 dib-build x", "0.2 ---- phase root.d: 1 script(s)",
                 "1.0 finished root.d/a in 0.8 s")
    assert cache_profile(plain)[0] == "from the cache: nothing, the log has no tree-cache line"
    assert not any(line.startswith(("still ran", "tree cache")) for line in slowest_steps(plain))
    assert cache_profile(tmp_path / "missing.log") == [
        f"no time-stamped lines in {tmp_path / 'missing.log'}"]


# --- hostile logs: a hook's output, broken numbers, junk in the reason ---------------------

def test_a_hooks_output_cannot_pose_as_the_cache(tmp_path):
    log = _log(tmp_path, "0 dib-build x",
               f"0.1 install.d/01-x | tree cache: hit {KEY} (root.d from the cache, "
               "restored in 0.1 s)",
               "0.2 ---- phase root.d: 1 script(s)")
    (tmp_path / "dib.log").write_text(log.read_text() + f"tree cache: hit {KEY} "
                                      "(root.d from the cache, restored in 0.1 s)\n")
    assert tree_cache_outcome(log) == ""


@pytest.mark.parametrize("line", [
    f"tree cache: hit {KEY} (../../etc from the cache, restored in 1.4 s)",
    f"tree cache: hit {KEY} (root.d from the cache, restored in nan s)",
    f"tree cache: hit {KEY} (root.d from the cache, restored in -1 s)",
    f"tree cache: hit {KEY} (root.d from the cache, restored in 1e999 s)",
    "tree cache: hit k/../ (root.d from the cache, restored in 1 s)",
    f"tree cache: hit {KEY} (root.d from the cache, restored in 1.4 s) and more",
    f"tree cache: stored {KEY} (812 MiB in 2.1 s)",  # a store without its miss
])
def test_malformed_cache_lines_are_not_a_hit(tmp_path, line):
    log = _log(tmp_path, "0 dib-build x", f"0.1 {line}", "0.2 ---- phase root.d: 1 script(s)")
    assert tree_cache_outcome(log) == ""
    assert cache_profile(log)[1] == "still ran: root.d 0.0 s"


def test_the_latest_cache_line_of_an_appended_log_wins(tmp_path):
    log = _log(tmp_path, "0 dib-build x", f"0.1 tree cache: miss {KEY}: first build",
               f"5 tree cache: hit {KEY} (root.d from the cache, restored in 0.5 s)",
               "6 ---- phase root.d: 1 script(s)", "6 ---- phase cleanup.d: 1 script(s)")
    found = tree_cache(_lines(log))
    assert (found.outcome, found.restored, found.ran) == ("hit", ("root.d",), ("cleanup.d",))


def test_a_reason_from_the_log_is_one_bounded_printable_line(tmp_path):
    reason = "\x1b[31mkey\x1b[0m\x07 changed\t" + "x" * 500
    log = _log(tmp_path, "0 dib-build x", f"0.1 tree cache: miss {KEY}: {reason}")
    head = cache_profile(log)[0]
    assert head.startswith("from the cache: nothing, a miss (key changed xxx")
    assert len(head) < 200 and head.endswith("…)")
    assert one_line("a\n\nb\x00c") == "a b c"


@pytest.mark.parametrize("text", [
    "finished root.d/a in 1.2.3 s",  # a number float() refuses
    "finished root.d/a in s",
    "dib-run-parts 01-x 1.2.3",
    "dib-run-parts Target:",
])
def test_broken_numbers_are_skipped_not_a_crash(tmp_path, text):
    log = _log(tmp_path, "0 dib-build x", f"0.1 {text}", "1 finished root.d/b in 0.5 s")
    assert slowest_steps(log)[0] == "    1.0 s  whole build"
    assert dib_slowest(log)[0] == "    1.0 s  whole build"


def test_a_stamp_that_is_no_date_and_bytes_that_are_no_utf8(tmp_path):
    log = tmp_path / "dib.log"
    log.write_bytes(b"2026-13-45 99:99:99.000 | finished root.d/a in 9.0 s\n"
                    b"2026-12-07 09:00:00.000 | dib-build \xff\xfe\n"
                    b"2026-12-07 09:00:02.000 | finished root.d/b in 2.0 s\n")
    assert slowest_steps(log)[:2] == ["    2.0 s  whole build", "    2.0 s  root.d/b"]


def _lines(log: Path) -> list[tuple[float, str]]:
    from bench.steps import _stamped
    return _stamped(log)


def tree_cache_outcome(log: Path) -> str:
    return tree_cache(_lines(log)).outcome

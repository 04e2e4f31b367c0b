"""dib.failure: the record, its JSON, the file beside the image and the error-line picker."""

import json

import pytest

from dib import failure
from dib.errors import CommandFailed, ConfigError, DibError, ElementError, Interrupted


@pytest.mark.parametrize(
    "tail, expected",
    [
        (  # apt: its own E: line, not dib's or the hook's last words
            [
                "Reading package lists...",
                "Building dependency tree...",
                "E: Unable to locate package nosuchpkg",
                "E: Unable to locate package other",
                "+ cleanup done",
            ],
            "E: Unable to locate package nosuchpkg",
        ),
        (  # bash
            [
                "starting",
                "/tmp/in_target.d/post-install.d/80-x: line 3: frobnicate: command not found",
                "",
            ],
            "/tmp/in_target.d/post-install.d/80-x: line 3: frobnicate: command not found",
        ),
        (  # dash
            ["/tmp/in_target.d/install.d/10-y: 2: frobnicate: not found"],
            "/tmp/in_target.d/install.d/10-y: 2: frobnicate: not found",
        ),
        (  # python: the exception line of the last traceback
            [
                "Traceback (most recent call last):",
                '  File "/x.py", line 1, in <module>',
                "    open('/nope')",
                "FileNotFoundError: [Errno 2] No such file or directory: '/nope'",
                "",
                "During handling of the above exception, another exception occurred:",
                "",
                "Traceback (most recent call last):",
                '  File "/x.py", line 3, in <module>',
                "    raise SystemError('gave up')",
                "SystemError: gave up",
            ],
            "SystemError: gave up",
        ),
        (  # debootstrap's E: line behind dib's own "tag | " prefix
            [
                "debootstrap | I: Retrieving InRelease",
                "debootstrap | E: Couldn't find these debs: x",
            ],
            "E: Couldn't find these debs: x",
        ),
        (  # the specific OS error nearest the end
            [
                "rm: cannot remove 'a': No such file or directory",
                "cp: cannot create regular file '/b': Permission denied",
                "bye",
            ],
            "cp: cannot create regular file '/b': Permission denied",
        ),
        (["ok", "ERROR: the disk is on fire", "retrying", "gave up"], "ERROR: the disk is on fire"),
        (  # tar on a full disk says so only this way
            ["tar: /out/x.tar: Wrote only 8192 of 10240 bytes", "tar: Error is not recoverable"],
            "tar: /out/x.tar: Wrote only 8192 of 10240 bytes",
        ),
        (["fatal: not a git repository"], "fatal: not a git repository"),
        (  # set -u: bash's own line, not an "Error:" the hook printed before it
            [
                "Error: something noisy but harmless",
                "/tmp/hooks/cleanup.d/01-copy-manifests-dir: line 32: DIB_ENV: unbound variable",
                "",
            ],
            "/tmp/hooks/cleanup.d/01-copy-manifests-dir: line 32: DIB_ENV: unbound variable",
        ),
        (  # ${X:?}
            ["starting", "/x/10-y: line 4: TARGET: parameter null or not set", "done?"],
            "/x/10-y: line 4: TARGET: parameter null or not set",
        ),
        (["Setting up libgpg-error-l10n", "something odd", "  "], "something odd"),
        ([], None),
        (["", "   "], None),
    ],
)
def test_pick_error_line(tail, expected):
    assert failure.pick_error_line(tail) == expected


def test_picked_line_is_bounded():
    line = failure.pick_error_line(["E: " + "x" * 5000])
    assert len(line) == failure.MAX_TEXT and line.endswith("...")


def test_record_json_is_one_compact_sorted_ascii_line():
    record = failure.FailureRecord(kind="hook", error="caf\u00e9 failed\nreally", status=3)
    text = record.to_json()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    assert "\n" not in text and "\\u00e9" in text and text.isascii()
    assert list(data) == sorted(data)
    assert set(data) == {
        "version",
        "kind",
        "phase",
        "hook",
        "element",
        "status",
        "error",
        "command",
        "message",
        "reason",
        "free_bytes",
        "seconds",
    }
    assert data["version"] == 1 and data["free_bytes"] == {"build": None, "output": None}
    assert record.log_line().startswith("dib-failure: {")


def test_record_round_trips_through_file_and_log_line(tmp_path):
    record = failure.FailureRecord(
        kind="packages",
        phase="install.d",
        hook="01-package-installs",
        element="package-installs",
        status=100,
        error="E: Unable to locate package x",
        command="apt-get install x",
        message="install.d/01-package-installs failed with exit code 100",
        free_bytes={"build": 1, "output": None},
        seconds=1.5,
    )
    path = failure.write(record, failure.path_for(tmp_path / "out" / "debian-bookworm"))
    assert path == tmp_path / "out" / "debian-bookworm.failure.json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    assert failure.read(path) == record
    line = "2025-01-01 00:00:00.000 | " + record.log_line()
    assert failure.FailureRecord.from_json(line) == record


def test_reading_ignores_unknown_keys_and_fills_free_bytes():
    record = failure.FailureRecord.from_json('{"kind": "hook", "future": 1, "free_bytes": null}')
    assert record.kind == "hook" and record.free_bytes == {"build": None, "output": None}
    with pytest.raises(ValueError):
        failure.FailureRecord.from_json("[1]")


def test_text_fields_are_bounded():
    record = failure.FailureRecord(command="c" * 3000, message="m" * 3000, error="e").bounded()
    assert len(record.command) == len(record.message) == failure.MAX_TEXT
    assert record.error == "e"


def test_notes_inner_first_and_kind_by_type():
    err = failure.note(DibError("x"), phase="install.d", hook="10-a")
    failure.note(err, phase="root.d", element="el")
    assert failure.noted(err) == {"phase": "install.d", "hook": "10-a", "element": "el"}
    assert failure.describe(ElementError("element 'x' not found"))["kind"] == "elements"
    assert failure.describe(ConfigError("bad"))["error"] == "bad"
    interrupted = failure.note(Interrupted("SIGTERM"), kind="hook", hook="50-slow")
    assert failure.describe(interrupted) == {"kind": "interrupted", "hook": "50-slow"}
    assert failure.describe(OSError(28, "No space left on device"))["error"] == (
        "OSError: [Errno 28] No space left on device"
    )


def test_command_failures_give_status_error_and_argv():
    err = CommandFailed(
        "tar", 2, ["tar: ./x: Cannot open: Permission denied"], command=["tar", "-c"]
    )
    found = failure.describe(err)
    assert found["status"] == 2
    assert found["error"] == "tar: ./x: Cannot open: Permission denied"
    assert found["command"] == "tar -c"


def test_record_for_measures_output_space_and_rounds_seconds(tmp_path):
    record = failure.record_for(
        DibError("boom"), "boom", output_dir=tmp_path / "not" / "yet", seconds=1.23456
    )
    assert record.free_bytes["output"] > 0 and record.free_bytes["build"] is None
    assert record.seconds == 1.23 and record.kind == "internal" and record.message == "boom"


def test_hook_detail_round_trip(tmp_path):
    path = tmp_path / "detail"
    env = {failure.HOOK_DETAIL_VAR: str(path)}
    failure.write_hook_detail(
        env, {"kind": "debootstrap", "status": 1, "error": "E: a\nb", "other": "x"}
    )
    assert failure.read_hook_detail(path) == {"kind": "debootstrap", "status": 1, "error": "E: a b"}
    path.write_text("kind=packages\nstatus=oops\ncommand=apt-get install x=1\n")
    assert failure.read_hook_detail(path) == {"kind": "packages", "command": "apt-get install x=1"}
    assert failure.read_hook_detail(tmp_path / "none") == {}
    failure.write_hook_detail({}, {"kind": "x"})  # no file asked for: nothing to do


def test_free_space_noted_at_two_depths_is_merged():
    from dib import failure

    err = RuntimeError("x")
    failure.note(err, free_bytes={"output": 10})
    failure.note(err, free_bytes={"build": 20, "output": 99})
    assert failure.noted(err)["free_bytes"] == {"output": 10, "build": 20}

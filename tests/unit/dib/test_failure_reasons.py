"""Why a hook ended: dib's failure record carries a reason from the hook's exit status,
its own error line and, when the kernel could not start it, its #! line.

The unit cases feed :func:`dib.failure.reason_for` what a hook leaves; the build cases
run dib's CLI in-process on real hooks that fail each way (CRLF line endings, a missing
interpreter, a signal, a Python exception, a resource limit).
"""

from __future__ import annotations

import sys

import pytest

from dib import failure
from tests.unit.dib.test_failure_build import assert_one_record
from tests.unit.dib.test_failure_build import dib as dib  # noqa: F401 (the fixture)


@pytest.mark.parametrize(
    "status, expected",
    [
        (137, "SIGKILL"),
        (139, "SIGSEGV"),
        (143, "SIGTERM"),
        (134, "SIGABRT"),
        (-9, "SIGKILL"),
        (-11, "SIGSEGV"),
        (0, None),
        (1, None),
        (127, None),
        (128, None),
        (255, None),  # 128 + 127: no such signal
        (-200, None),
        (None, None),
        ("137", None),
    ],
)
def test_signal_name(status, expected):
    assert failure.signal_name(status) == expected


@pytest.mark.parametrize(
    "status, error, expected",
    [
        (137, "x: line 3:  42 Killed   python3 big.py", "killed by SIGKILL (exit status 137)"),
        (139, None, "killed by SIGSEGV (exit status 139)"),
        (-9, None, "killed by SIGKILL"),
        (143, "", "killed by SIGTERM (exit status 143)"),
        (152, None, "resource limit: CPU time limit exceeded"),  # SIGXCPU: ulimit -t
        (153, None, "resource limit: File size limit exceeded"),  # SIGXFSZ: ulimit -f
        (1, "OSError: [Errno 24] Too many open files: '/dev/null'",
         "resource limit: Too many open files"),
        (254, "x: fork: retry: Resource temporarily unavailable",
         "resource limit: Resource temporarily unavailable"),
        (126, "bash: /usr/bin/tar: Argument list too long",
         "resource limit: Argument list too long"),
        (1, "KeyError: 'arch'", "Python exception: KeyError: 'arch'"),
        (1, "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
         "Python exception: json.decoder.JSONDecodeError: Expecting value: line 1 column 1 "
         "(char 0)"),
        (1, "cp: cannot stat 'x': No such file or directory", None),
        (1, "Error: something", None),  # dnf's word, not a Python exception
        (1, None, None),
        (None, None, None),
    ],
)
def test_reason_from_status_and_error_line(status, error, expected):
    assert failure.reason_for(status, error) == expected


def _script(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(0o755)
    return str(path)


def test_crlf_line_endings_are_read_from_the_script(tmp_path):
    script = _script(tmp_path, "50-crlf", b"#!/bin/bash\r\necho hi\r\n")
    bash52 = ("/h/dib-run-hook: line 38: /b/hooks/root.d/50-crlf: cannot execute: required file "
              "not found")
    older = "bash: /b/hooks/root.d/50-crlf: /bin/bash^M: bad interpreter: No such file or directory"
    env = "/usr/bin/env: \u2018python3\\r\u2019: No such file or directory"
    crlf = "bad #! line: Windows (CRLF) line endings in the script"
    assert failure.reason_for(127, bash52, script) == crlf
    assert failure.reason_for(126, older, script) == crlf
    env_script = _script(tmp_path, "60-env", b"#!/usr/bin/env python3\r\nprint(1)\r\n")
    assert failure.reason_for(127, env, env_script) == crlf


def test_a_missing_interpreter_is_named(tmp_path):
    script = _script(tmp_path, "50-py2", b"#!/usr/bin/python2.7\nprint 'x'\n")
    line = "/h/dib-run-hook: line 38: /b/root.d/50-py2: cannot execute: required file not found"
    assert failure.reason_for(127, line, script) == "interpreter not found: /usr/bin/python2.7"
    env_script = _script(tmp_path, "60-env", b"#!/usr/bin/env python4 -u\nprint(1)\n")
    env_line = "/usr/bin/env: 'python4': No such file or directory"
    assert failure.reason_for(127, env_line, env_script) == (
        "interpreter not found: /usr/bin/env python4")


@pytest.mark.parametrize(
    "content, line",
    [  # the script started; a command inside it could not: not the script's #! line
        (b"#!/bin/bash\n./tool\n", "/b/root.d/50-x: line 2: ./tool: cannot execute: required "
                                   "file not found"),
        (b"#!/bin/bash\nenv foo\n", "env: 'foo': No such file or directory"),
        (b"#!/bin/bash\n/opt/x/run\n", "/b/50-x: line 2: /opt/x/run: /bin/sh^M: bad interpreter: "
                                       "No such file or directory"),
    ],
)
def test_a_command_inside_the_script_is_not_its_interpreter(tmp_path, content, line):
    script = _script(tmp_path, "50-x", content)
    assert failure.reason_for(127, line, script) is None


@pytest.mark.parametrize(
    "script",
    [None, "apt-get install x", "/nonexistent/hook", "/dev/null", "/"],
)
def test_no_script_to_read_is_no_interpreter_reason(script):
    line = "bash: /b/50-x: cannot execute: required file not found"
    assert failure.reason_for(127, line, script) is None


def test_a_huge_first_line_is_read_bounded(tmp_path):
    script = _script(tmp_path, "50-big", b"#!" + b"x" * (1 << 20) + b"\n")
    line = "bash: /b/50-big: cannot execute: required file not found"
    reason = failure.reason_for(127, line, script)
    assert reason is not None and len(reason) < 300


def test_dpkgs_failed_script_line_is_the_error_line_not_apts_summary():
    tail = [
        "Setting up corpus-daemon (1.0) ...",
        "dpkg: error processing package corpus-daemon (--configure):",
        " installed corpus-daemon package post-installation script subprocess returned error "
        "exit status 1",
        "Errors were encountered while processing:",
        " corpus-daemon",
        "E: Sub-process /usr/bin/dpkg returned an error code (1)",
    ]
    assert failure.pick_error_line(tail) == (
        "installed corpus-daemon package post-installation script subprocess returned error "
        "exit status 1")


def test_the_reason_round_trips_and_is_bounded(tmp_path):
    record = failure.FailureRecord(kind="hook", status=137, reason="r" * 5000).bounded()
    assert len(record.reason) == failure.MAX_TEXT
    path = failure.write(record, tmp_path / "x.failure.json")
    assert failure.read(path).reason == record.reason
    assert failure.FailureRecord.from_json('{"kind": "hook"}').reason is None  # older dib


# ---- real hooks through dib's CLI -------------------------------------------------


def _hook_record(dib, name, text):  # noqa: F811 (the fixture)
    path = dib.elements / name / "root.d" / f"50-{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    path.chmod(0o755)
    record = assert_one_record(dib.run("fakeos", name))
    assert (record.kind, record.element, record.hook) == ("hook", name, f"50-{name}")
    return record


def test_hook_saved_with_crlf_line_endings(dib):  # noqa: F811
    record = _hook_record(dib, "crlf", "#!/bin/bash\r\nset -e\r\necho hi\r\n")
    assert record.reason == "bad #! line: Windows (CRLF) line endings in the script"


def test_hook_whose_interpreter_is_missing(dib):  # noqa: F811
    record = _hook_record(dib, "py2", "#!/usr/bin/python2.7-corpus\nprint 'hi'\n")
    assert record.reason == "interpreter not found: /usr/bin/python2.7-corpus"


@pytest.mark.parametrize("sig, name", [("KILL", "SIGKILL"), ("SEGV", "SIGSEGV")])
def test_hook_killed_by_a_signal(dib, sig, name):  # noqa: F811
    record = _hook_record(dib, "sig", f"#!/bin/bash\necho working\nkill -{sig} $$\n")
    assert record.reason.startswith(f"killed by {name}")


def test_hook_whose_helper_was_killed_exits_137(dib):  # noqa: F811
    record = _hook_record(dib, "helper", "#!/bin/bash\nset -e\nbash -c 'kill -KILL $$'\n")
    assert record.status == 137
    assert record.reason == "killed by SIGKILL (exit status 137)"


def test_python_hook_gives_its_exception(dib):  # noqa: F811
    record = _hook_record(dib, "py", f"#!{sys.executable}\nconfig = {{}}\nconfig['arch']\n")
    assert record.reason == "Python exception: KeyError: 'arch'"


def test_hook_under_an_open_files_limit(dib):  # noqa: F811
    record = _hook_record(
        dib, "nofile",
        f"#!/bin/bash\nset -e\nulimit -n 32\n{sys.executable} -c '[open(\"/dev/null\") for _ in "
        "range(64)]'\n")
    assert record.reason == "resource limit: Too many open files"


def test_an_ordinary_failure_has_no_reason(dib):  # noqa: F811
    record = _hook_record(dib, "plain", "#!/bin/bash\necho 'frobnicating'\nexit 3\n")
    assert record.status == 3 and record.reason is None

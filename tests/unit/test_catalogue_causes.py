"""Causes named inside what used to be generic buckets: the verdict stage reads dib's
record reason, the engine's own word on how a container ended, and keeps the line that
names the most (dpkg's package over its bare "leaving unconfigured")."""

from __future__ import annotations

import docker.errors
import pytest

from dib import failure
from matrix.containers.engine import OOM_KILLED_LINE, exit_evidence
from matrix.verdict.catalogue import ANY, load_catalogue
from matrix.verdict.classify import Evidence, classify, classify_lines, line_hits

CATALOGUE = load_catalogue()


def _record(**fields) -> dict:
    base = {"kind": "hook", "phase": "install.d", "hook": "50-x", "element": "corpus",
            "status": 1, "error": None}
    record = failure.FailureRecord(**{**base, **fields}).to_dict()
    return record


@pytest.mark.parametrize(
    "status, error, script_text, expected, legend_part",
    [
        (137, None, None, "killed-by-sigkill", "in install.d/50-x"),
        (139, None, None, "segmentation-fault", "in install.d/50-x"),
        (143, None, None, "killed-by-sigterm", "in install.d/50-x"),
        (135, None, None, "killed-by-signal", "SIGBUS"),
        (152, None, None, "resource-limit", "CPU time limit exceeded"),
        (1, "KeyError: 'arch'", None, "python-exception", "KeyError: 'arch' in install.d/50-x"),
        (127, "/b/dib-run-hook: line 38: /b/install.d/50-x: cannot execute: required file not "
              "found", b"#!/bin/bash\r\n", "crlf-line-endings", "install.d/50-x"),
        (127, "/b/dib-run-hook: line 38: /b/install.d/50-x: cannot execute: required file not "
              "found", b"#!/usr/bin/python2\n", "interpreter-not-found", "/usr/bin/python2"),
        (3, "frobnicate: failed", None, "hook-failed", "install.d/50-x exited 3"),
    ],
)
def test_a_hooks_reason_names_its_cause(tmp_path, status, error, script_text, expected,
                                        legend_part):
    script = None
    if script_text is not None:
        script = tmp_path / "50-x"
        script.write_bytes(script_text + b"echo\n")
    reason = failure.reason_for(status, error, str(script) if script else None)
    record = _record(status=status, error=error, command=str(script) if script else None,
                     reason=reason)
    verdict = classify(Evidence("h", "t", record=record), CATALOGUE)
    assert verdict.category.id == expected
    assert legend_part in verdict.category.legend


def test_the_engines_oom_line_beats_the_kill_it_caused(tmp_path):
    log = tmp_path / "cell.log"
    log.write_text("Reading package lists...\nbash: line 1:     7 Killed      apt-get update\n"
                   f"\n{OOM_KILLED_LINE}\n")
    verdict = classify(Evidence("h", "t", log=log), CATALOGUE)
    assert verdict.category.id == "out-of-memory"
    assert verdict.category.labels[:2] == ["out-of-memory", "killed-by-sigkill"]


class _Container:
    def __init__(self, state=None, fail=False):
        self.attrs = {"State": state} if state is not None else {}
        self.fail = fail

    def reload(self):
        if self.fail:
            raise docker.errors.APIError("gone")


@pytest.mark.parametrize(
    "container, code, expected",
    [
        (_Container({"OOMKilled": True}), 137, f"\n{OOM_KILLED_LINE}\n"),
        (_Container({"OOMKilled": False}), 137, "\nengine: container exited with status 137\n"),
        (_Container({"OOMKilled": False}), 139, "\nengine: container exited with status 139\n"),
        (_Container({"OOMKilled": False}), 1, ""),
        (_Container({"OOMKilled": False}), 0, ""),
        (_Container({"OOMKilled": "yes"}), 1, ""),  # only the engine's own true
        (_Container(), 137, "\nengine: container exited with status 137\n"),
        (_Container(fail=True), 137, "\nengine: container exited with status 137\n"),
        (_Container(fail=True), 0, ""),
    ],
)
def test_exit_evidence(container, code, expected):
    assert exit_evidence(container, code) == expected


@pytest.mark.parametrize(
    "line, expected",
    [
        ("engine: container exited with status 137", "killed-by-sigkill"),
        ("engine: container exited with status 139", "segmentation-fault"),
        ("engine: container exited with status 143", "killed-by-sigterm"),
        ("engine: container exited with status 130", "killed-by-signal"),
    ],
)
def test_the_engines_exit_line_is_named(line, expected):
    assert classify_lines([line], "h", "t", CATALOGUE).category.id == expected


def test_the_line_naming_the_package_is_kept_over_a_later_bare_one(tmp_path):
    lines = ["dpkg: dependency problems prevent configuration of corpus-app:",
             " corpus-app depends on corpus-lib; however:",
             "  Package corpus-lib is not installed.",
             "dpkg: error processing package corpus-app (--install):",
             " dependency problems - leaving unconfigured"]
    log = tmp_path / "dpkg.log"
    log.write_text("\n".join(lines) + "\n")
    verdict = classify(Evidence("h", "t", log=log), CATALOGUE)
    assert verdict.category.id == "dependency-problems"
    assert verdict.category.legend == "dpkg dependency problems: corpus-app left unconfigured"


def test_an_ignored_line_is_never_the_entrys(tmp_path):
    benign = "E: Can not write log (Is /dev/pts mounted?) - posix_openpt (19: No such device)"
    assert classify_lines([benign], "h", "t", CATALOGUE).category.id == "uncategorized"
    assert classify_lines(["E: Something new broke"], "h", "t",
                          CATALOGUE).category.id == "apt-error"
    mine = tmp_path / "mine.yaml"
    mine.write_text("- id: noisy\n  patterns: ['^step ']\n  ignore: ['^step \\d+ ok$']\n")
    catalogue = load_catalogue([mine])
    assert classify_lines(["step 3 ok"], "h", "t", catalogue).category.id == "uncategorized"
    assert classify_lines(["step 3 broke"], "h", "t", catalogue).category.id == "noisy"


def test_ignore_patterns_are_checked_like_patterns(tmp_path):
    from matrix.config.diagnostics import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: x\n  patterns: ['a']\n  ignore: ['(a)\\1']\n")
    with pytest.raises(ConfigError) as err:
        load_catalogue([bad])
    assert "[0].ignore[0]: bad regex" in str(err.value)


def test_line_hits_numbers_lines_and_orders_entries_best_first():
    rules = CATALOGUE.scoped(ANY, ANY)
    lines = ["fine", "E: Unable to locate package nosuch", "fine",
             "E: Can not write log (Is /dev/pts mounted?)"]
    hits = list(line_hits(lines, rules))
    assert [(number, [r.id for r in matched]) for number, _, matched in hits] == [
        (2, ["package-not-found", "apt-error"])]


@pytest.mark.parametrize(
    "row, lines, expected",
    [  # a failing test's own output names other causes: the tox row's verdict is the tests
        ("tox", ["Traceback (most recent call last):", '  File "t.py", line 3',
                 "FileNotFoundError: [Errno 2] No such file or directory: '/tmp/x'",
                 "FAILED (errors=1)"], "tests-failed"),
        ("tox", ["E       PermissionError: [Errno 13] Permission denied: '/etc/x'",
                 "1 failed, 67 passed in 0.16s"], "tests-failed"),
        # an environment that stops the tests from running is named over "FAIL code"
        ("tox", ["WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, "
                 "status=None)) after connection broken by 'NewConnectionError(...)': /simple/x/",
                 "ERROR: No matching distribution found for x", "  py: FAIL code 1 (1.0 s)"],
         "package-index-unreachable"),
    ],
)
def test_tests_failed_against_what_test_output_says(row, lines, expected):
    assert classify_lines(lines, "h", row, CATALOGUE).category.id == expected


# The same new causes in the words of other tools, versions and hosts (dpkg before 1.20,
# rpm, bash, make, gcc, tox 3 and 4, virtualenv, pip behind a proxy, grub, curl, wget).
WORDINGS = [
    ('t',
      'dpkg: error processing package grub-pc (--configure):\n installed grub-pc '
      'package post-installation script subprocess returned error exit status 10',
     'maintainer-script-failed'),
    ('t',
      'dpkg: error processing archive /var/cache/apt/archives/x.deb (--unpack):\n '
      'new x package pre-installation script subprocess returned error exit status 1',
     'maintainer-script-failed'),
    ('t',
      'dpkg: error processing package foo (--configure):\n subprocess installed '
      'post-installation script returned error exit status 1',
     'maintainer-script-failed'),
    ('t',
      'dpkg: error processing package x (--remove):\n installed x package '
      'pre-removal script subprocess returned error exit status 1',
     'maintainer-script-failed'),
    ('t',
      'error: %post(httpd-2.4-1.x86_64) scriptlet failed, exit status 1',
     'maintainer-script-failed'),
    ('t', "touch: cannot touch '/etc/x': Read-only file system", 'read-only-filesystem'),
    ('t',
      'mkdir: cannot create directory ‘/usr/local/x’: Read-only file system',
     'read-only-filesystem'),
    ('t', "OSError: [Errno 30] Read-only file system: '/sys/fs/x'", 'read-only-filesystem'),
    ('t',
      'E: Could not open lock file /var/lib/dpkg/lock-frontend - open (30: '
      'Read-only file system)',
     'read-only-filesystem'),
    ('t',
      'E: Unable to acquire the dpkg frontend lock '
      '(/var/lib/dpkg/lock-frontend), are you root?',
     'not-root'),
    ('t', 'Killed', 'killed-by-sigkill'),
    ('t', 'make: *** [Makefile:12: all] Killed', 'killed-by-sigkill'),
    ('t', 'cc1plus: fatal error: Killed signal terminated program cc1plus', 'out-of-memory'),
    ('t',
      '[ 1234.5] Out of memory: Killed process 4321 (python3) total-vm:1000kB',
     'out-of-memory'),
    ('t', 'E: Sub-process /usr/bin/dpkg received a segmentation fault.', 'segmentation-fault'),
    ('t', 'Segmentation fault (core dumped)', 'segmentation-fault'),
    ('t', "python3: ../x.c:12: main: Assertion `p != NULL' failed.", 'aborted'),
    ('t',
      "/tmp/in_target.d/install.d/50-x: line 2: $'\\r': command not found",
     'crlf-line-endings'),
    ('t', '/usr/bin/env: ‘bash\\r’: No such file or directory', 'crlf-line-endings'),
    ('t',
      'bash: ./x.sh: /bin/bash^M: bad interpreter: No such file or directory',
     'crlf-line-endings'),
    ('t',
      'bash: /tmp/x: /usr/bin/python: bad interpreter: No such file or directory',
     'interpreter-not-found'),
    ('tox', 'ERROR:  py38: InterpreterNotFound: python3.8', 'interpreter-not-found'),
    ('tox',
      'RuntimeError: failed to find interpreter for Builtin discover of '
      "python_spec='python3.14'",
     'interpreter-not-found'),
    ('t',
      'Traceback (most recent call last):\n  File "x", line 1\nAttributeError: '
      "'NoneType' object has no attribute 'split'",
     'python-exception'),
    ('t', "ModuleNotFoundError: No module named 'yaml'", 'python-module-missing'),
    ('t', 'bash: fork: retry: Resource temporarily unavailable', 'resource-limit'),
    ('t', 'OSError: [Errno 24] Too many open files', 'resource-limit'),
    ('t',
      'dpkg: dependency problems prevent configuration of libfoo:amd64:\n '
      'libfoo:amd64 depends on libbar (>= 2); however:\n  Package libbar is not '
      'installed.\n\ndpkg: error processing package libfoo:amd64 (--configure):\n '
      'dependency problems - leaving unconfigured',
     'dependency-problems'),
    ('tox',
      '=========================== 3 failed, 120 passed, 2 warnings in 12.34s '
      '===========================',
     'tests-failed'),
    ('tox', 'FAILED (failures=2, errors=1)', 'tests-failed'),
    ('tox',
      'FAILED tests/test_x.py::test_y - AssertionError: assert 1 == 2\n==== 1 '
      'failed in 0.1s ====',
     'tests-failed'),
    ('tox',
      'ERROR: Could not install packages due to an OSError: '
      "HTTPSConnectionPool(host='files.pythonhosted.org', port=443): Max retries "
      "exceeded with url: /x.whl (Caused by NewConnectionError('<x>: Failed to "
      "establish a new connection: [Errno 101] Network is unreachable'))",
     'package-index-unreachable'),
    ('tox',
      'WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, '
      'status=None)) after connection broken by '
      "'ConnectTimeoutError(<pip._vendor.urllib3.connection.HTTPSConnection "
      "object at 0x7f>, 'Connection to pypi.org timed out. (connect "
      "timeout=15)')': /simple/pytest/\nERROR: Could not find a version that "
      'satisfies the requirement pytest (from versions: none)\nERROR: No matching '
      'distribution found for pytest',
     'package-index-unreachable'),
    ('tox',
      'WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, '
      "status=None)) after connection broken by 'ProxyError('Cannot connect to "
      "proxy.', OSError('Tunnel connection failed: 403 Forbidden'))': /simple/pytest/",
     'package-index-unreachable'),
    ('t',
      "E: The repository 'http://m/debian bookworm-backports Release' does not "
      'have a Release file.',
     'suite-not-on-mirror'),
    ('t',
      'E: Failed to fetch http://m/debian/pool/main/x/x_1.deb  404  Not Found '
      '[IP: 1.2.3.4 80]\nE: Unable to fetch some archives, maybe run apt-get '
      'update or try with --fix-missing?',
     'mirror-out-of-sync'),
    ('t',
      'dpkg: unrecoverable fatal error, aborting:\n loading files list file for '
      "package 'libc6:amd64': cannot open /var/lib/dpkg/info/libc6:amd64.list "
      '(No such file or directory)',
     'package-database-corrupt'),
    ('t', 'umount: /tmp/dib/mnt: target is busy.', 'device-busy'),
    ('t', "sed: can't read /etc/default/grub: No such file or directory", 'file-not-found'),
    ('t', "cp: cannot stat '/tmp/x': No such file or directory", 'file-not-found'),
    ('t', 'Failed to connect to bus: No such file or directory', 'systemd-not-running'),
    ('t',
      'update-initramfs: failed for /boot/initrd.img-6.1.0-10-amd64 with 1.',
     'initramfs-failed'),
    ('t',
      "grub-probe: error: failed to get canonical path of `/dev/root'.",
     'grub-device-not-found'),
    ('t', 'grub-install: error: cannot find EFI directory.', 'efi-partition-missing'),
    ('t', 'curl: (22) The requested URL returned error: 404', 'download-failed'),
    ('t', 'wget: server returned error: HTTP/1.1 404 Not Found', 'download-failed'),
    ('t', 'ERROR 404: Not Found.', 'download-failed'),
    ('t', 'sha256sum: WARNING: 1 computed checksum did NOT match', 'checksum-mismatch'),
    ('t',
      'docker: Error response from daemon: toomanyrequests: You have reached '
      'your pull rate limit.',
     'registry-rate-limited'),
    ('t', '/x/50-y: line 12: syntax error: unexpected end of file', 'shell-syntax-error'),
    ('t', 'error: externally-managed-environment', 'externally-managed-environment'),
    ('t',
      "setcap: Failed to set capabilities on file `/usr/bin/ping' (Operation not "
      'supported)',
     'xattr-unsupported'),
    ('t',
      "E: Repository 'http://m/debian bookworm InRelease' changed its 'Suite' "
      "value from 'testing' to 'stable'",
     'release-info-changed'),
    ('t',
      'W: GPG error: http://m bookworm InRelease: The following signatures were '
      "invalid: EXPKEYSIG 1 x\nE: The repository 'http://m bookworm InRelease' is "
      'not signed.',
     'release-signature-invalid'),
    ('t',
      'E: Method https has died unexpectedly!\nE: Sub-process https received signal 4.',
     'killed-by-signal'),
    ('t',
      'tar: ./x: Cannot change ownership to uid 1000, gid 1000: Operation not permitted',
     'capability-denied'),
]


@pytest.mark.parametrize("row, text, expected", WORDINGS, ids=[w[1][:60] for w in WORDINGS])
def test_new_causes_in_other_words(row, text, expected):
    assert classify_lines(text.splitlines(), "h", row, CATALOGUE).category.id == expected

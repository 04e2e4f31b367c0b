"""The verdict stage and its catalogue: every entry, every source of evidence, bounded cost."""

import json
import tracemalloc

import pytest

from matrix.config.diagnostics import ConfigError
from matrix.verdict.catalogue import load_catalogue
from matrix.verdict.classify import Evidence, classify, classify_lines, message_of

CATALOGUE = load_catalogue()

# One real-looking log line per entry that has patterns: (row, line, legend or None).
SAMPLES = {
    "timeout": ("t", "cell timed out after 20 s", "timeout"),
    "engine-error": ("t", "engine error: 500 Server Error", "container engine error"),
    "qemu-error": ("t:boot", "boot: qemu failed: qemu-system-x86_64 not found", None),
    "missing-dependency": ("t", "prerequisite failed: h.hostgen", "missing dependency"),
    "upstream-elements-unavailable": (
        "t", "upstream elements unavailable: diskimage-builder 3.43.0: pip download of "
        "diskimage-builder==3.43.0 failed: ERROR: No matching distribution found",
        "diskimage-builder 3.43.0 elements unavailable"),
    "image-verification-failed": (
        "t", "verify: os-release: image is bookworm, target wants forky",
        "image is bookworm, target wants forky"),
    "out-of-disk-space": ("t", "tar: ./x: Cannot write: No space left on device",
                          "out of disk space"),
    "capability-denied": ("t", "mount: /x/proc: permission denied.", None),
    "noexec-build-dir": (
        "t", "chroot: failed to run command '/tmp/in_target.d/dib-run-hook': Permission denied",
        None),
    "no-binfmt-handler": ("t", "chroot: failed to run command '/bin/true': Exec format error",
                          None),
    "no-loop-device": ("t", "losetup: cannot find an unused loop device", None),
    "mirror-not-configured": (
        "hostgen", "no debian mirror: DIB_DISTRIBUTION_MIRROR is not set and no debian archive "
        "URI was found in /etc/apt/sources.list or /etc/apt/sources.list.d/", None),
    "release-file-expired": (
        "t", "E: Release file for http://m/debian/dists/sid/InRelease is expired (invalid "
        "since 1d).", None),
    "release-signature-invalid": (
        "t", "W: GPG error: http://m/debian bookworm InRelease: The following signatures "
        "couldn't be verified because the public key is not available: NO_PUBKEY 6ED0E7B82643E131",
        None),
    "mirror-out-of-sync": ("t", "E: Failed to fetch http://m/debian/pool/x.deb  Hash Sum "
                           "mismatch", None),
    "dpkg-interrupted": ("t", "E: dpkg was interrupted, you must manually run 'dpkg --configure "
                         "-a' to correct the problem.", None),
    "suite-not-on-mirror": (
        "t", "mirror http://m/debian does not carry suite 'noble' (x)",
        "mirror does not carry suite 'noble'"),
    "mirror-unreachable": (
        "t", "mirror http://127.0.0.1:9/debian unreachable: refused", "mirror/network unreachable"),
    "snapshot-incomplete": (
        "t", "E: Failed to fetch http://m/debian/pool/main/h/hello/hello_2.10-3_amd64.deb  404  "
        "Not in snapshot [IP: 127.0.0.1 3142]", "snapshot-incomplete: hello"),
    "package-manager-locked": (
        "t", "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 1234", None),
    "apt-sources-invalid": ("t", "E: Malformed entry 1 in list file /etc/apt/sources.list "
                            "(Component)", None),
    "certificate-not-trusted": (
        "t", "E: Failed to fetch https://m/debian/dists/bookworm/InRelease  Certificate "
        "verification failed: The certificate is NOT trusted.", None),
    "index-not-on-mirror": ("t", "E: Invalid Release file, no entry for main/binary-arm64/Packages",
                            "mirror has no main/binary-arm64/Packages"),
    "out-of-memory": ("t", "gzip: stdout: Cannot allocate memory", None),
    "unmet-dependencies": (
        "t", "E: Unable to correct problems, you have held broken packages.", None),
    "package-not-found": ("t", "E: Unable to locate package nosuchpkg",
                          "package not found: nosuchpkg"),
    "no-such-script": (
        "t", "12:00 | root.d/08-debootstrap | No such script: /usr/share/debootstrap/scripts/x",
        "No such script: /usr/share/debootstrap/scripts/x"),
    "zypper-not-available": ("t", "root.d/08-zypper-minimal | zypper not available",
                             "zypper not available"),
    "dnf-not-available": ("t", "dnf not available", "dnf not available"),
    "runuser-not-available": ("t", "runuser not available", "runuser not available"),
    "tox-not-available": ("t", "tox not available", "tox not available"),
    "missing-host-tool": ("t", "bash: qemu-img: command not found",
                          "missing host tool: qemu-img"),
    "element-not-found": ("t", "ERROR: element 'foo' not found (needed by vm <- img)",
                          "element not found: foo"),
    "element-cycle": ("t", "ERROR: element dependency cycle: a -> b -> a", None),
    "element-conflict": ("t", "ERROR: both 'a' and 'b' provide 'operating-system'", None),
    "image-conversion-failed": (
        "t", "qemu-img: /out/x.qcow2: Invalid parameter 'zstd'", "image conversion failed"),
    "hook-failed": ("t", "2026-11-29 08:43:11.737 | ERROR: post-install.d/50-x failed with exit "
                    "code 3: x: broken", "post-install.d/50-x exited 3"),
    "bootstrap-failed": (
        "t", "ERROR: debootstrap of bookworm from http://m/debian failed (exit 1)", None),
    "package-install-failed": (
        "t", "E: Sub-process /usr/bin/dpkg returned an error code (1)", None),
    "environment-failed": ("t", "ERROR: sourcing environment.d failed: x", None),
    "dib-internal-error": ("t", "Traceback (most recent call last):", None),
    "base-image-unavailable": ("hostgen", "base image unavailable: cannot pull x",
                               "base image unavailable"),
    "tests-failed": ("tox", "  hostcheck: FAIL code 1 (3.2 seconds)", "hostcheck: tests failed"),
    "root-fs-not-found": ("t:boot", "ALERT!  LABEL=cloudimg-rootfs does not exist.", None),
    "kernel-panic": ("t:boot", "Kernel panic - not syncing: VFS", "boot: kernel panic"),
    "bootloader-error": ("t:boot", "grub rescue> ", None),
    "no-bootloader": ("t:boot", "No bootable device.", None),
    "vm-reset": ("t:boot", "boot: the machine reset during the kernel stage", None),
    "boot-timeout": ("t:boot", "boot: no marker after 600 s; furthest stage: kernel", None),
    "boot-emergency-mode": (
        "t:boot", "boot: emergency mode: [DEPEND] Dependency failed for mnt-data.mount",
        "boot: emergency mode (systemd gave up the boot)"),
    "boot-unit-failed": ("t:boot", "boot: unit failed: foo.service",
                         "boot: unit failed: foo.service"),
    "boot-cloud-init-failed": (
        "t:boot", "boot: cloud-init did not run the user-data: no /var/lib/x (status: error)",
        "boot: cloud-init did not run the seed's user-data"),
    "boot-no-network": ("t:boot", "boot: no network: no IPv4 default route after 60 s",
                        "boot: no network"),
    "boot-name-resolution-failed": (
        "t:boot", "boot: name resolution failed: m.example did not resolve", None),
    "boot-root-not-grown": ("t:boot", "boot: root not grown: /dev/vda1 ends 1024 MiB before",
                            None),
    "boot-shutdown-hung": ("t:boot", "boot: shutdown hung: still running 60 s after", None),
    "boot-check-failed": ("t:boot", "boot: check cmdline failed: no serial console=",
                          "boot: check cmdline failed"),
    "boot-checks-unfinished": (
        "t:boot", "boot: the checks did not finish after 600 s; last check: units", None),
    "image-leaks-build-host-identity": (
        "t", "verify: identity: image leaks build-host identity: /etc/machine-id: set at "
        "build time (5946...)", "image leaks build-host identity: /etc/machine-id"),
    # Causes named inside what used to be generic buckets (the tools' own words).
    "engine-unreachable": ("t", "docker: Cannot connect to the Docker daemon at "
                           "unix:///var/run/docker.sock. Is the docker daemon running?", None),
    "registry-rate-limited": (
        "hostgen", "toomanyrequests: You have reached your pull rate limit. You may increase the "
        "limit by authenticating and upgrading", None),
    "read-only-filesystem": (
        "t", "E: Could not open lock file /var/lib/dpkg/lock-frontend - open (30: Read-only "
        "file system)", "read-only filesystem: /var/lib/dpkg/lock-frontend"),
    "resource-limit": ("t", "bash: fork: retry: Resource temporarily unavailable",
                       "resource limit reached: Resource temporarily unavailable"),
    "killed-by-sigkill": (
        "t", "/tmp/in_target.d/install.d/50-big: line 3: 4242 Killed                  "
        "python3 /tmp/build.py", "killed by SIGKILL (out of memory, or killed from outside): "
        "python3"),
    "segmentation-fault": ("t", "bash: line 1:    77 Segmentation fault      (core dumped) ./x",
                           "segmentation fault (SIGSEGV): ./x"),
    "aborted": ("t", "double free or corruption (out)", "aborted (SIGABRT)"),
    "killed-by-sigterm": ("t", "./run.sh: line 9:  1212 Terminated              sleep 600",
                          "terminated (SIGTERM): sleep"),
    "killed-by-signal": ("t", "killed by SIGBUS (exit status 135)",
                         "killed by a signal: SIGBUS"),
    "io-error": ("t", "tar: ./usr/lib/x.so: Read error at byte 0, while reading 4096 bytes: "
                 "Input/output error", None),
    "device-busy": ("t", "umount: /tmp/dib_build.x/mnt/proc: target is busy.",
                    "device or file busy: /tmp/dib_build.x/mnt/proc"),
    "not-root": ("t", "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), "
                 "are you root?", None),
    "xattr-unsupported": ("t", "setfattr: /mnt/x: Operation not supported", None),
    "permission-denied": ("t", "cp: cannot create regular file '/etc/x.conf': Permission denied",
                          "permission denied: /etc/x.conf"),
    "maintainer-script-failed": (
        "t", " installed corpus-pkg package post-installation script subprocess returned error "
        "exit status 3", "package corpus-pkg post-installation script failed with exit status 3"),
    "dependency-problems": (
        "t", "dpkg: dependency problems prevent configuration of corpus-app:",
        "dpkg dependency problems: corpus-app left unconfigured"),
    "conffile-prompt": ("t", " end of file on stdin at conffile prompt", None),
    "file-conflict": (
        "t", " trying to overwrite '/usr/bin/tool', which is also in package a 1.0",
        "package file conflict: /usr/bin/tool is also in a"),
    "package-archive-corrupt": ("t", "dpkg-deb: error: 'x.deb' is not a Debian format archive",
                                None),
    "package-database-corrupt": (
        "t", "E: The package lists or status file could not be parsed or opened.", None),
    "package-signature-invalid": (
        "t", "E: There were unauthenticated packages and -y was used without "
        "--allow-unauthenticated", None),
    "apt-method-missing": ("t", "E: The method driver /usr/lib/apt/methods/https could not be "
                           "found.", "apt transport not available: /usr/lib/apt/methods/https"),
    "release-info-changed": (
        "t", "E: Repository 'http://m/debian stable InRelease' changed its 'Codename' value from "
        "'bookworm' to 'trixie'", None),
    "mirror-response-invalid": (
        "t", "E: Failed to fetch http://m/debian/dists/bookworm/InRelease  Clearsigned file isn't "
        "valid, got 'NOSPLIT' (does the network require authentication?)", None),
    "apt-refused-change": (
        "t", "E: Held packages were changed and -y was used without --allow-change-held-packages.",
        None),
    "suite-mismatch": ("t", "E: Asked to install suite stable, but got testing (codename: trixie) "
                       "from mirror", "mirror serves another suite than asked: asked stable, got "
                       "testing"),
    "bootstrap-target-not-empty": ("t", "E: Tried to extract package, but file already exists. "
                                   "Exit...", None),
    "filesystem-size-invalid": ("t", "resize2fs: New size smaller than minimum (526841)", None),
    "filesystem-mount-failed": (
        "t", "mount: /mnt: wrong fs type, bad option, bad superblock on /dev/loop0p1, missing "
        "codepage or helper program, or other error.",
        "mount failed: wrong filesystem type or bad superblock (/mnt)"),
    "user-exists": ("t", "useradd: user 'stack' already exists",
                    "user or group already exists: stack"),
    "filesystem-corrupt": ("t", "e2fsck: Bad magic number in super-block while trying to open "
                           "x.raw", None),
    "filesystem-feature-unsupported": (
        "t", "e2fsck: Filesystem has unsupported feature(s) while trying to open root.img", None),
    "image-locked": ("t", "qemu-img: Failed to get shared \"write\" lock", None),
    "efi-partition-missing": ("t", "grub-install: error: cannot find EFI directory.", None),
    "grub-device-not-found": (
        "t", "grub-install: error: failed to get canonical path of `overlay'.", None),
    "efi-nvram-unavailable": (
        "t", "grub-install: error: efibootmgr failed to register the boot entry: Operation not "
        "permitted.", None),
    "grub-platform-missing": (
        "t", "grub-install: error: /usr/lib/grub/x86_64-efi/modinfo.sh doesn't exist. Please "
        "specify --target or --directory.", None),
    "grub-embedding-impossible": (
        "t", "grub-install: error: embedding is not possible, but this is required for "
        "cross-disk install.", None),
    "initramfs-failed": ("t", "update-initramfs: failed for /boot/initrd.img-6.1.0-27-amd64 with "
                         "1.", "initramfs generation failed for /boot/initrd.img-6.1.0-27-amd64"),
    "systemd-not-running": ("t", "System has not been booted with systemd as init system (PID 1). "
                            "Can't operate.", None),
    "crlf-line-endings": ("t", "bash: /tmp/x/install.d/50-y: /bin/bash^M: bad interpreter: No "
                          "such file or directory", None),
    "interpreter-not-found": ("t", "ERROR:  py314: InterpreterNotFound: python3.14",
                              "interpreter not found: python3.14"),
    "python-module-missing": ("t", "ModuleNotFoundError: No module named 'yaml'",
                              "Python module not found: yaml"),
    "unbound-variable": ("t", "/tmp/x/install.d/50-y: line 4: DIB_FOO: unbound variable",
                         "shell variable not set: DIB_FOO"),
    "shell-syntax-error": ("t", "/tmp/x/50-y: line 9: syntax error near unexpected token `fi'",
                           None),
    "file-not-found": ("t", "cp: cannot stat '/tmp/x/files/a.conf': No such file or directory",
                       "file not found: /tmp/x/files/a.conf"),
    "python-exception": ("t", "ValueError: invalid literal for int() with base 10: 'x'",
                         "ValueError: invalid literal for int() with base 10: 'x'"),
    "package-index-unreachable": (
        "tox", "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, "
        "status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3."
        "connection.HTTPSConnection object at 0x7f>: Failed to establish a new connection: "
        "[Errno 111] Connection refused')': /simple/pytest/", None),
    "python-version-unsupported": (
        "tox", "ERROR: Package 'dib-matrix' requires a different Python: 3.9.2 not in '>=3.10'",
        "Python version not supported by dib-matrix"),
    "architecture-mismatch": (
        "t", " package architecture (arm64) does not match system (amd64)",
        "package built for another architecture: arm64"),
    "python-package-not-found": ("tox", "ERROR: No matching distribution found for nosuchpkg",
                                 "Python package not found: nosuchpkg"),
    "python-dependency-conflict": ("tox", "ERROR: ResolutionImpossible: for help visit https://"
                                   "pip.pypa.io/", None),
    "python-package-build-failed": ("tox", "ERROR: Failed building wheel for lxml",
                                    "Python package build failed: lxml"),
    "externally-managed-environment": ("t", "error: externally-managed-environment", None),
    "python-hash-mismatch": ("tox", "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE "
                             "REQUIREMENTS FILE.", None),
    "download-failed": ("t", "curl: (22) The requested URL returned error: 404",
                        "download failed: HTTP 404"),
    "checksum-mismatch": ("t", "sha256sum: WARNING: 1 computed checksum did NOT match", None),
    "no-tests-ran": ("tox", "============================ no tests ran in 0.01s "
                     "=============================", "no tests ran"),
    "test-collection-error": (
        "tox", "ImportError while importing test module '/src/tests/test_x.py'.",
        "tests could not be collected: /src/tests/test_x.py"),
    "tox-config-error": ("tox", "ERROR: tox config file (either pyproject.toml, tox.ini, "
                         "setup.cfg) not found", None),
    "tox-command-not-allowed": ("tox", "py: failed with make is not allowed, use "
                                "allowlist_externals to allow it", None),
    "check-deps-failed": ("tox", "ERROR: hostcheck: could not install deps [pytest]; v = "
                          "InvocationError('/x/pip install pytest', 1)",
                          "hostcheck: installing the check's dependencies failed"),
    "command-usage-error": ("t", "debootstrap: unrecognized or invalid option --variant2",
                            None),
    # catch-alls: the tool's own error line is the legend
    "apt-error": ("t", "E: Internal Error, No file name for libc6:amd64",
                  "apt/debootstrap: Internal Error, No file name for libc6:amd64"),
    "dpkg-error": ("t", "dpkg: error: parsing file '/var/lib/dpkg/available' failed",
                   None),
    "e2fsprogs-error": ("t", "mke2fs: Cannot create filesystem with requested number of inodes",
                        "mke2fs: Cannot create filesystem with requested number of inodes"),
    "qemu-img-error": ("t", "qemu-img: Could not create snapshot 'x': -22 (Invalid argument)",
                       None),
    "grub-error": ("t", "grub-mkconfig: error: unknown device type md0.", None),
    "tool-error": ("t", "ERROR: cannot reach the signing service", "error: cannot reach the "
                   "signing service"),
}
# Entries a cell names through its hint (or dib through its record) only.
HINT_ONLY = {"setup-command-failed", "facts-probe-failed", "build-failed",
             "dib-config-error", "build-interrupted"}


@pytest.mark.parametrize("category", sorted(SAMPLES))
def test_each_entry_names_its_sample(category):
    row, line, legend = SAMPLES[category]
    verdict = classify_lines(["noise", line, "more noise"], "h", row, CATALOGUE)
    assert verdict.category.id == category
    assert verdict.evidence == message_of(line)
    if legend:
        assert verdict.category.legend == legend


def test_every_bundled_entry_is_sampled_or_named_by_a_cell():
    assert {r.id for r in CATALOGUE.rules} == set(SAMPLES) | HINT_ONLY


def test_one_legend_per_id():
    for rule in CATALOGUE.rules:
        assert rule.legend.strip(), rule.id
    assert len({r.id for r in CATALOGUE.rules}) == len(CATALOGUE.rules)


@pytest.mark.parametrize("hint", sorted(HINT_ONLY - {"dib-config-error", "build-interrupted"}))
def test_a_hint_names_the_entry_with_the_cells_line(hint):
    verdict = classify(Evidence("h", "hostgen", ("RUN apt-get x exited with 100",), hint=hint),
                       CATALOGUE)
    assert verdict.category.id == hint
    assert verdict.evidence == "RUN apt-get x exited with 100"


def test_a_precise_cause_in_the_log_beats_the_hostgen_steps_hint(tmp_path):
    log = tmp_path / "hostgen.log"
    log.write_text("Step 3/5 : RUN apt-get install nosuch\nE: Unable to locate package nosuch\n")
    verdict = classify(Evidence("h", "hostgen", ("RUN apt-get exited with 100",), log,
                                hint="setup-command-failed"), CATALOGUE)
    assert verdict.category.id == "package-not-found"
    assert verdict.category.labels == ["package-not-found", "apt-error", "setup-command-failed"]


def test_the_hint_of_a_timeout_beats_whatever_the_log_says(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("E: Unable to locate package nosuch\n")
    verdict = classify(Evidence("h", "t", ("cell timed out after 5 s",), log, hint="timeout"),
                       CATALOGUE)
    assert verdict.category.id == "timeout"


def test_multi_label_keeps_every_match_and_priority_picks_the_legend():
    verdict = classify_lines(["zypper not available", "E: Unable to locate package x"], "h", "t",
                             CATALOGUE)
    assert verdict.category.id == "zypper-not-available"
    assert set(verdict.category.labels) >= {"zypper-not-available", "package-not-found"}


def test_last_matching_line_is_the_evidence(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("No such script: /a/noble\nNo such script: /a/forky\n")
    verdict = classify(Evidence("h", "t", log=log), CATALOGUE)
    assert verdict.category.legend == "No such script: /a/forky"


def test_only_the_last_attempt_is_judged(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("E: Unable to locate package x\n\n# dib-matrix: attempt 2\n"
                   "mirror http://m unreachable: refused\n")
    verdict = classify(Evidence("h", "t", log=log), CATALOGUE)
    assert verdict.category.id == "mirror-unreachable"
    assert "package-not-found" not in verdict.category.labels


def test_uncategorized_keeps_the_tail_bounded(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {n}\n" for n in range(40)))
    verdict = classify(Evidence("h", "t", log=log), CATALOGUE)
    assert verdict.category.id == "uncategorized"
    assert verdict.evidence.splitlines() == [f"line {n}" for n in range(25, 40)]
    log.write_text("x" * 50_000 + "\n")
    assert len(classify(Evidence("h", "t", log=log), CATALOGUE).evidence) <= 1024


# ---- dib's failure record -------------------------------------------------------

HOOK_RECORD = {"version": 1, "kind": "hook", "phase": "post-install.d", "hook": "80-growroot",
               "element": "growroot", "status": 1, "error": "growpart: bad partition table",
               "command": "/tmp/x/post-install.d/80-growroot", "message": "m",
               "free_bytes": {"build": 5 << 30, "output": 9 << 30}, "seconds": 3.2}


def test_a_hook_failure_names_element_and_hook_with_the_hooks_own_line():
    verdict = classify(Evidence("h", "t", record=HOOK_RECORD), CATALOGUE)
    assert verdict.category.id == "hook-failed"
    assert verdict.category.legend == "element growroot: post-install.d/80-growroot exited 1"
    assert verdict.evidence == "growpart: bad partition table"


def test_the_record_is_read_from_the_log_when_no_file_came(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("2026-11-29 08:00:00.000 | dib-failure: " + json.dumps(HOOK_RECORD) + "\n"
                   "2026-11-29 08:00:00.001 | ERROR: post-install.d/80-growroot failed\n")
    verdict = classify(Evidence("h", "t", log=log), CATALOGUE)
    assert verdict.category.legend == "element growroot: post-install.d/80-growroot exited 1"


def test_a_known_cause_in_the_hooks_error_line_beats_the_plain_hook_failure():
    record = {**HOOK_RECORD, "error": "E: Unable to locate package cloud-guest-utils"}
    verdict = classify(Evidence("h", "t", record=record), CATALOGUE)
    assert verdict.category.id == "package-not-found"
    assert "hook-failed" in verdict.category.labels


def test_almost_no_space_left_is_disk_full_whatever_the_log_says(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("tar: write error\n")
    full = classify(Evidence("h", "t", log=log, record=HOOK_RECORD,
                             free_bytes={"build": 4096, "output": 1 << 30}), CATALOGUE)
    assert full.category.id == "out-of-disk-space"
    assert "build filesystem had 4096 bytes free" in full.evidence
    roomy = classify(Evidence("h", "t", log=log, free_bytes={"build": 1 << 30}), CATALOGUE)
    assert roomy.category.id == "uncategorized"


# ---- precision --------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "I: Keyring file not available at /usr/share/keyrings/x.gpg; switching to https mirror",
    "I: Retrieving Release",
    "W: Cannot check Release signature; keyring file not available /usr/share/keyrings/x.gpg",
    "Get:1 http://m/debian bookworm/main amd64 libc6 amd64 2.36-9 [2757 kB]",
    "2026-11-29 08:00:00.000 | tmpfs not available (mount failed); building on disk in /tmp/x",
    "N: Download is performed unsandboxed as root",
])
def test_informational_lines_never_name_a_cause(line):
    assert classify_lines([line], "h", "t", CATALOGUE).category.id == "uncategorized"


def test_an_apt_warning_counts_only_for_entries_that_take_warnings():
    line = ("W: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not "
            "connect to 127.0.0.1:9 (127.0.0.1), connection refused")
    assert classify_lines([line], "h", "t", CATALOGUE).category.id == "mirror-unreachable"
    assert classify_lines(["W: foo: command not found"], "h", "t",
                          CATALOGUE).category.id == "uncategorized"


@pytest.mark.parametrize("line", [
    "bash: zypper: command not found",
    "sh: 1: zypper: not found",
    "sudo: zypper: command not found",
    "FileNotFoundError: [Errno 2] No such file or directory: 'zypper'",
    "zypper not available",
])
def test_one_cause_one_id_whatever_the_wording(line):
    assert classify_lines([line], "h", "t", CATALOGUE).category.id == "zypper-not-available"


def test_boot_entries_apply_to_boot_rows_only():
    assert classify_lines(["Kernel panic - not syncing"], "h", "t",
                          CATALOGUE).category.id == "uncategorized"


# ---- bounded cost -----------------------------------------------------------------

def test_a_huge_single_line_log_is_read_in_bounded_memory(tmp_path):
    log = tmp_path / "huge.log"
    with log.open("wb") as out:
        out.write(b"E: Unable to locate package x ")
        for _ in range(32):
            out.write(b"y" * (1 << 20))
    tracemalloc.start()
    try:
        verdict = classify(Evidence("h", "t", log=log), CATALOGUE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict.category.id == "package-not-found"
    assert peak < 8 << 20
    assert len(verdict.evidence) <= 1024


@pytest.mark.parametrize("char", ["a", " ", ":", "/", "'", "\u00e9", "\x00"])
def test_long_adversarial_lines_do_not_trip_the_bundled_patterns(char, tmp_path):
    log = tmp_path / "x.log"
    log.write_text((char * 100_000 + "\n") * 20)
    verdict = classify(Evidence("h", "*", log=log), CATALOGUE)
    assert verdict.category is not None


# ---- the catalogue file -----------------------------------------------------------

def test_user_catalogue_adds_scoped_rules_and_replaces_by_id(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("""\
- id: flaky-proxy
  legend: "proxy said {code}"
  priority: 99
  patterns: ['proxy error (?P<code>\\d+)']
  hosts: ['debian-*']
- id: timeout
  legend: took too long
  patterns: ['^cell timed out']
- id: my-boot-rule
  legend: mine
  priority: 200
  targets: ['*:boot']
  patterns: ['^boot: no marker']
""")
    catalogue = load_catalogue([extra])
    hit = classify_lines(["proxy error 502"], "debian-sid", "t", catalogue)
    assert hit.category.legend == "proxy said 502"
    miss = classify_lines(["proxy error 502"], "fedora-43", "t", catalogue)
    assert miss.category.id == "uncategorized"
    timed = classify(Evidence("h", "t", ("cell timed out after 1 s",), hint="timeout"),
                     catalogue)
    assert timed.category.legend == "took too long"
    boot = classify_lines(["boot: no marker after 600 s; furthest stage: kernel"], "h", "x:boot",
                          catalogue)
    assert boot.category.id == "my-boot-rule"


def test_bad_catalogue_names_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: Bad Id\n  patterns: ['x']\n- id: ok\n  patterns: ['(']\n"
                   "- id: slow\n  patterns: ['(a+)\\1']\n- id: look\n  patterns: ['(?=x)y']\n"
                   "- id: kinds\n  record: [nope]\n  colour: red\n"
                   "- id: huge\n  legend: '{path:>99999999999}'\n"
                   "- id: positional\n  legend: '{0} and {1}'\n"
                   "- id: scoped\n  targets: 5\n  link: 5\n")
    with pytest.raises(ConfigError) as err:
        load_catalogue([bad])
    text = str(err.value)
    assert "bad.yaml:1: [0].id: required" in text
    assert "bad.yaml:4: [1].patterns[0]: bad regex" in text
    assert "bad.yaml:6: [2].patterns[0]: bad regex: not a linear-time (RE2) regex" in text
    assert "bad.yaml:8: [3].patterns[0]: bad regex" in text
    assert "[4].record: must be a list of dib failure kinds" in text
    assert "[4].colour: unknown key" in text
    assert "[5].legend: '{path:>99999999999}': only {name} fields" in text
    assert "[6].legend: '{0}': only {name} fields" in text
    assert "[7].targets: must be a glob or a list of globs" in text
    assert "[7].link: must be a string" in text


# The same causes in the words of other tools and versions (apt, debootstrap, dpkg,
# upstream diskimage-builder, wget, the container engine).
WORDINGS = [
    ("  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)",
     "mirror-unreachable"),
    ("W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Could not connect "
     "to deb.debian.org:80 (151.101.2.132), connection timed out", "mirror-unreachable"),
    ("Err:1 http://m/debian bookworm InRelease\n  Temporary failure resolving 'm'",
     "mirror-unreachable"),
    ("E: Failed to fetch http://m/debian/dists/bookworm/InRelease  403  Forbidden [IP: 1.2.3.4 80]",
     "mirror-unreachable"),
    ("Connecting to 127.0.0.1:9... failed: Connection refused.", "mirror-unreachable"),
    ("E: The repository 'http://m/debian nosuch Release' no longer has a Release file.",
     "suite-not-on-mirror"),
    ("E: Release file for http://m/debian/dists/bookworm-updates/InRelease is not valid yet "
     "(invalid for another 5h 2min 1s). Updates for this repository will not be applied.",
     "release-file-expired"),
    ("W: GPG error: http://m/debian sid InRelease: The following signatures were invalid: "
     "EXPKEYSIG 0E98404D386FA1D9 Debian Archive Automatic Signing Key",
     "release-signature-invalid"),
    ("dpkg: error processing archive /var/cache/apt/archives/x.deb (--unpack):\n"
     " cannot copy extracted data for './usr/bin/x' to '/usr/bin/x.dpkg-new': failed to write "
     "(No space left on device)", "out-of-disk-space"),
    ("unxz: /x/var/lib/apt/lists/y_Packages: Write error: No space left on device",
     "out-of-disk-space"),
    ("dpkg: error processing package foo (--configure):\n installed foo package post-installation "
     "script subprocess returned error exit status 1", "maintainer-script-failed"),
    ("E: Could not get lock /var/lib/apt/lists/lock. It is held by process 42 (apt-get)",
     "package-manager-locked"),
    ("/usr/sbin/growpart: 4: sfdisk: not found", "missing-host-tool"),
    ("kpartx is not found in PATH", "missing-host-tool"),
    ("qcow2 output format specified but qemu-img executable not found.", "missing-host-tool"),
    ('docker: Error response from daemon: failed to create shim task: OCI runtime create failed: '
     'runc create failed: unable to start container process: exec: "python3": executable file '
     'not found in $PATH: unknown.', "missing-host-tool"),
    ("ERROR: At least one distribution root element must be specified", "element-conflict"),
    ("diskimage_builder.element_dependencies.MissingElementException: Element 'nope' not found",
     "element-not-found"),
    ("losetup: /tmp/image.raw: failed to set up loop device: No such file or directory",
     "no-loop-device"),
    ("mount: /tmp/dib_build.x/mnt/proc: permission denied.", "capability-denied"),
    ("mknod: /dev/loop8: Operation not permitted", "capability-denied"),
    ("E: Cannot install into target '/tmp/x' mounted with noexec or nodev", "noexec-build-dir"),
    ("/bin/sh: 1: /tmp/in_target.d/dib-run-hook: Permission denied", "noexec-build-dir"),
]


@pytest.mark.parametrize("text,expected", WORDINGS, ids=[w[0][:50] for w in WORDINGS])
def test_the_same_cause_in_other_words(text, expected):
    assert classify_lines(text.splitlines(), "h", "t", CATALOGUE).category.id == expected


def test_the_docs_document_every_category_key():
    from pathlib import Path

    from matrix.verdict.catalogue import CATEGORY_KEYS

    doc = (Path(__file__).parents[2] / "docs" / "categories.md").read_text()
    section = doc.split("\n## Verification", 1)[0]
    missing = [key.name for key in CATEGORY_KEYS if f"`{key.name}`" not in section]
    assert not missing, f"docs/categories.md's Failure categories part lacks {missing}"


def test_record_kinds_are_a_closed_set(tmp_path):
    from matrix.verdict.catalogue import RecordKind

    mine = tmp_path / "mine.yaml"
    mine.write_text("- id: one-kind\n  record: hook\n- id: pri\n  legend: x\n  priorty: 3\n")
    with pytest.raises(ConfigError) as err:
        load_catalogue([mine])
    assert "mine.yaml:5: [1].priorty: unknown key (did you mean 'priority'?)" in str(err.value)
    mine.write_text("- id: one-kind\n  record: hook\n")
    rule = load_catalogue([mine]).get("one-kind")
    assert rule.record == (RecordKind.HOOK,) and rule.legend == "one-kind"

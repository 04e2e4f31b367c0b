# The real matrix on the debian-bookworm host with a --dib-tree that adds corpus
# elements; every cell log is copied to $OUT/<host>/<row>.log.
set -u
tree=$WORK/tree
mkdir -p "$tree" "$WORK/targets" "$WORK/hosts"
for part in pyproject.toml tox.ini tests/__init__.py tests/unit/__init__.py tests/unit/dib \
            matrix/run/incontainer dib elements; do
    mkdir -p "$(dirname "$tree/$part")"
    cp -a "$REPO/$part" "$tree/$part"
done
# A patch under review that breaks one of dib's unit tests (the tox row runs them).
cat > "$tree/tests/unit/dib/test_corpus_regression.py" <<'T'
def parse_size(text):
    return int(text.rstrip("MG")) * (1024 if text.endswith("G") else 1)


def test_parse_size_gigabytes():
    assert parse_size("2G") == 2048


def test_parse_size_megabytes_with_suffix():
    assert parse_size("512MiB") == 512
T
find "$tree" -name __pycache__ -prune -exec rm -rf {} +

# hook <element> <phase>/<name> : the hook's text comes on stdin
hook() { mkdir -p "$tree/elements/$1/$(dirname "$2")"; cat > "$tree/elements/$1/$2"; chmod 755 "$tree/elements/$1/$2"; }
deps() { local el=$1; shift; mkdir -p "$tree/elements/$el"; printf '%s\n' "$@" > "$tree/elements/$el/element-deps"; }
# target <name> <elements (yaml list body)> <release> [extra env lines]
target() {
    { echo "name: $1"; echo "description: corpus case $1"; echo "elements: [$2]"; echo "env:";
      echo "  DIB_RELEASE: $3"; [ -n "${4:-}" ] && printf '%s\n' "$4"; echo "outputs: [tar]"; } \
        > "$WORK/targets/$1.yaml"
}

# An element hook that fails with its own error line (post-install.d, in the chroot).
hook corpus-hook-fail post-install.d/50-corpus-config <<'H'
#!/bin/bash
set -eu
echo "corpus-config: writing /etc/corpus/service.conf from its template"
if [ ! -f /etc/corpus/service.conf.in ]; then
    echo "corpus-config: ERROR: template /etc/corpus/service.conf.in not found" >&2
    exit 1
fi
H
# A package the release does not have, through package-installs.yaml.
deps corpus-nosuchpkg package-installs
printf 'nosuchpkg-corpus:\n' > "$tree/elements/corpus-nosuchpkg/package-installs.yaml"
# A dependency cycle.
deps corpus-cycle-a corpus-cycle-b
deps corpus-cycle-b corpus-cycle-c
deps corpus-cycle-c corpus-cycle-a
# Missing host tools, as each interpreter words it (root.d runs on the host, before debootstrap).
hook corpus-tool-bash root.d/01-corpus-kpartx <<'H'
#!/bin/bash
set -eu
echo "mapping partitions of $TARGET_ROOT/../disk.raw"
kpartx -av "$TARGET_ROOT/../disk.raw"
H
hook corpus-tool-sh root.d/01-corpus-vhd <<'H'
#!/bin/sh
set -eu
vhd-util check -n "$TARGET_ROOT/../disk.vhd"
H
hook corpus-tool-env root.d/01-corpus-legacy <<'H'
#!/usr/bin/env python2
print "legacy element"
H
hook corpus-tool-python root.d/01-corpus-nbd <<'H'
#!/usr/bin/python3
import subprocess
print("attaching the disk with qemu-nbd-corpus", flush=True)
subprocess.check_call(["qemu-nbd-corpus", "--connect=/dev/nbd0", "disk.qcow2"])
H
# Disk full: apt's own free-space check (1 MB tmpfs over the archive cache).
deps corpus-apt-archives-full package-installs
hook corpus-apt-archives-full root.d/90-corpus-small-archives <<'H'
#!/bin/bash
set -eu
mount -t tmpfs -o size=1m tmpfs "$TARGET_ROOT/var/cache/apt/archives"
mkdir -p "$TARGET_ROOT/var/cache/apt/archives/partial"
H
printf 'perl:\n' > "$tree/elements/corpus-apt-archives-full/package-installs.yaml"
# Disk full: dpkg unpacking into a 2 MB tmpfs at /usr/share/perl (perl-modules is ~20 MB).
deps corpus-dpkg-full package-installs
hook corpus-dpkg-full root.d/90-corpus-small-share <<'H'
#!/bin/bash
set -eu
mkdir -p "$TARGET_ROOT/usr/share/perl"
mount -t tmpfs -o size=2m tmpfs "$TARGET_ROOT/usr/share/perl"
H
printf 'perl:\n' > "$tree/elements/corpus-dpkg-full/package-installs.yaml"

target corpus-forky-unchecked debian-minimal forky
target corpus-buster debian-minimal buster
target corpus-refused debian-minimal bookworm "  DIB_DISTRIBUTION_MIRROR: http://127.0.0.1:9/debian"
target corpus-noresolve debian-minimal bookworm "  DIB_DISTRIBUTION_MIRROR: http://nonexistent.invalid/debian"
target corpus-sid-expired debian-minimal sid
target corpus-nosuchpkg "debian-minimal, corpus-nosuchpkg" bookworm
target corpus-hook-fail "debian-minimal, corpus-hook-fail" bookworm
target corpus-not-found "debian-minimal, corpus-no-such-element" bookworm
target corpus-cycle "debian-minimal, corpus-cycle-a" bookworm
target corpus-tool-bash "debian-minimal, corpus-tool-bash" bookworm
target corpus-tool-sh "debian-minimal, corpus-tool-sh" bookworm
target corpus-tool-env "debian-minimal, corpus-tool-env" bookworm
target corpus-tool-python "debian-minimal, corpus-tool-python" bookworm
target corpus-apt-full "debian-minimal, corpus-apt-archives-full" bookworm
target corpus-dpkg-full "debian-minimal, corpus-dpkg-full" bookworm

# Hosts whose hostgen fails: unpullable registry images, a suite the mirror lacks,
# a package the suite lacks.
cat > "$WORK/hosts/registry-unpullable.yaml" <<'H'
name: registry-unpullable
description: a registry image no registry serves here
base:
  image: ubuntu:24.04
package-manager: apt
packages: [python3]
H
cat > "$WORK/hosts/debian-nosuchsuite.yaml" <<'H'
name: debian-nosuchsuite
description: bootstrap of a suite the mirror does not carry
base:
  bootstrap:
    suite: nosuchsuite
    variant: minbase
packages: [python3]
H
cat > "$WORK/hosts/debian-buster.yaml" <<'H'
name: debian-buster
description: bootstrap of a suite that left the mirror (buster moved to the archive)
base:
  bootstrap:
    suite: buster
    variant: minbase
packages: [python3]
H
# A host with neither python3 nor tox (its tox row and builds meet that).
cat > "$WORK/hosts/debian-bare.yaml" <<'H'
name: debian-bare
description: bookworm with debootstrap only (no python3, no tox)
base:
  bootstrap:
    suite: bookworm
    variant: minbase
packages: [debootstrap]
H
cat > "$WORK/hosts/debian-badpkg.yaml" <<'H'
name: debian-badpkg
description: bookworm with a package bookworm does not have
base:
  bootstrap:
    suite: bookworm
    variant: minbase
packages: [python3, python3-yaml, nosuchpkg-corpus]
H

targets=""
for t in "$WORK"/targets/*.yaml; do targets="$targets, targets/$(basename "$t")"; done
cat > "$WORK/matrix.yaml" <<EOM
name: corpus-main
hosts: [debian-bookworm, hosts/registry-unpullable.yaml, hosts/debian-nosuchsuite.yaml,
        hosts/debian-buster.yaml, hosts/debian-badpkg.yaml, hosts/debian-bare.yaml]
targets: [debian-bookworm, debian-forky, opensuse-leap-15, centos-stream9${targets}]
checks: [tox]
max-parallel: 2
timeout: 20m
hostgen-timeout: 15m
EOM
cat "$WORK/matrix.yaml"
(cd "$REPO" && "$PYTHON" -m matrix.cli run "$WORK/matrix.yaml" --out "$WORK/out" \
    --dib-tree "$tree") > "$OUT/run.txt" 2>&1
run=$(readlink -f "$WORK/out/latest") || exit 1
cp -r "$run/logs/." "$OUT/"
cp "$run/results.json" "$OUT/results.json"
# A skipped cell has no log file: its evidence line is in results.json only.
"$PYTHON" - "$run/results.json" > "$OUT/missing-dependency.log" <<'P'
import json, sys
cells = json.load(open(sys.argv[1]))["cells"]
cell = next(c for c in cells if c["id"] == "debian-badpkg.debian-bookworm")
print(cell["evidence"])
P

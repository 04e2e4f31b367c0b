# OpenStack diskimage-builder 3.43.0 from PyPI, run on this machine (root, Docker's
# kind of machine: /dev/loop0 exists, but no loop partition nodes, no device-mapper).
set -u
venv=${DIB_VENV:-/tmp/dibvenv}
[ -x "$venv/bin/disk-image-create" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q diskimage-builder==3.43.0; }
command -v sudo > /dev/null || { echo "diskimage-builder needs sudo" >&2; exit 1; }
export PATH="$venv/bin:$PATH" DIB_RELEASE=bookworm DIB_DISTRIBUTION_MIRROR="$MIRROR"
export DIB_IMAGE_CACHE=$WORK/cache
dic() { local log=$1; shift; echo "+ disk-image-create $*" > "$OUT/$log"
        disk-image-create "$@" >> "$OUT/$log" 2>&1; echo "exit status $?" >> "$OUT/$log"; }
mkdir -p "$WORK/elements/corpus-hook-fail/root.d"
cat > "$WORK/elements/corpus-hook-fail/root.d/05-corpus-check" <<'H'
#!/bin/bash
set -eu
echo "corpus-check: verifying the site configuration"
echo "corpus-check: ERROR: DIB_CORPUS_SITE is not set" >&2
exit 1
H
chmod 755 "$WORK/elements/corpus-hook-fail/root.d/05-corpus-check"
mkdir -p "$WORK/elements/corpus-cycle-a" "$WORK/elements/corpus-cycle-b"
echo corpus-cycle-b > "$WORK/elements/corpus-cycle-a/element-deps"
echo corpus-cycle-a > "$WORK/elements/corpus-cycle-b/element-deps"
export ELEMENTS_PATH=$WORK/elements
dic dic-not-found.log -o "$WORK/x" debian-minimal corpus-no-such-element
# diskimage-builder accepts this element-deps cycle without a word; with its default
# security mirror (not this machine's) the build then fails on that mirror instead.
dic dic-cycle.log -o "$WORK/y" -t tar debian-minimal corpus-cycle-a
# From here on the security archive of this machine's apt sources, as a user would set it.
DIB_DEBIAN_SECURITY_MIRROR=$(grep -rhE '^(deb|URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian-security' | head -1)
export DIB_DEBIAN_SECURITY_MIRROR
dic dic-hook-fail.log -o "$WORK/z" -t tar debian-minimal corpus-hook-fail
# The vm path on a machine without kpartx (see upstream-dib-kpartx.sh for one with it).
if ! command -v kpartx > /dev/null; then dic dic-vm.log -o "$WORK/vm" vm debian-minimal; fi
dic dic-tar.log -o "$WORK/t" -t tar debian-minimal

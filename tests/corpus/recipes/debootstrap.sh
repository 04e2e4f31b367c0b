# debootstrap run directly on this machine (Debian 12), each failure provoked for real.
set -u
db() { local log=$1; shift; echo "+ debootstrap $*" > "$OUT/$log"; debootstrap "$@" >> "$OUT/$log" 2>&1; echo "exit status $?" >> "$OUT/$log"; }

# A release this debootstrap has no script for (forky is newer than bookworm's debootstrap).
db no-such-script-forky.log --variant=minbase forky "$WORK/r1" "$MIRROR"
# A suite the mirror does not carry, with an explicit script so debootstrap gets to ask the mirror.
db suite-missing.log --variant=minbase nosuchsuite "$WORK/r2" "$MIRROR" /usr/share/debootstrap/scripts/sid
# Mirror refusing connections (nothing listens on loopback port 9).
db connection-refused.log --variant=minbase bookworm "$WORK/r3" http://127.0.0.1:9/debian
# Mirror name that never resolves (.invalid is reserved).
db name-not-resolving.log --variant=minbase bookworm "$WORK/r4" http://nonexistent.invalid/debian
# Release signed by a key not in the keyring given.
db bad-keyring.log --variant=minbase --keyring=/usr/share/keyrings/debian-archive-removed-keys.gpg bookworm "$WORK/r5" "$MIRROR"
# A package that is not in the release.
db include-nosuchpkg.log --variant=minbase --include=nosuchpkg-corpus bookworm "$WORK/r6" "$MIRROR"
# Target directory on a noexec,nodev tmpfs.
mkdir -p "$WORK/mnt-noexec" && mount -t tmpfs -o size=400m,noexec,nodev tmpfs "$WORK/mnt-noexec"
db noexec-target.log --variant=minbase bookworm "$WORK/mnt-noexec/root" "$MIRROR"
umount "$WORK/mnt-noexec"
# A disk that fills while debootstrapping: see dib-host-full.sh (debootstrap's own
# output hides it; dib prints the end of debootstrap.log, where the cause is).
# Success: minbase bookworm (about 200 MB).
db success-minbase.log --variant=minbase bookworm "$WORK/ok" "$MIRROR"

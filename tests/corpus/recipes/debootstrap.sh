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
# Target directory on a 40 MB tmpfs: full while writing the Packages index
# (debootstrap only says "Couldn't download .../Packages").
mkdir -p "$WORK/mnt-full" && mount -t tmpfs -o size=40m tmpfs "$WORK/mnt-full"
db disk-full-packages.log --variant=minbase bookworm "$WORK/mnt-full/root" "$MIRROR"
umount "$WORK/mnt-full"
# 150 MB: full while extracting the debs (debootstrap only says "Tried to extract
# package, but file already exists"; tar's "No space left on device" stays in
# the target's debootstrap/debootstrap.log).
mount -t tmpfs -o size=150m tmpfs "$WORK/mnt-full"
db disk-full-extract.log --variant=minbase bookworm "$WORK/mnt-full/root" "$MIRROR"
umount "$WORK/mnt-full"
# Success: minbase bookworm (about 200 MB).
db success-minbase.log --variant=minbase bookworm "$WORK/ok" "$MIRROR"

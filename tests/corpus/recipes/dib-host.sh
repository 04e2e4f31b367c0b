# dib (python -m dib) run directly on this machine (Debian 12, root), one base cache.
set -u
cd "$REPO"
export DIB_RELEASE=bookworm DIB_DISTRIBUTION_MIRROR="$MIRROR"
cache=$WORK/cache
dib() { local log=$1; shift; echo "+ python -m dib $*" > "$OUT/$log"
        "$PYTHON" -m dib "$@" >> "$OUT/$log" 2>&1; echo "exit status $?" >> "$OUT/$log"; }
# Success, and the cached base for the rest.
dib dib-tar-qcow2-ok.log -o "$WORK/ok/img" -t tar,qcow2 --checksum --image-cache "$cache" debian-minimal
# -p with a package the release does not have.
dib dib-p-nosuchpkg.log -o "$WORK/p/img" -t tar --image-cache "$cache" -p nosuchpkg-corpus debian-minimal
# DIB_RELEASE this host's debootstrap does not know.
DIB_RELEASE=forky dib dib-forky.log -o "$WORK/f/img" -t tar --image-cache "$cache" debian-minimal
# Build directory on a noexec tmpfs (TMPDIR there, --no-tmpfs so dib does not mount its own).
mkdir -p "$WORK/mnt-noexec"; mount -t tmpfs -o size=2g,noexec tmpfs "$WORK/mnt-noexec"
TMPDIR=$WORK/mnt-noexec dib dib-noexec-tmpdir.log --no-tmpfs -o "$WORK/n/img" -t tar --image-cache "$cache" debian-minimal
umount "$WORK/mnt-noexec"
# Output directory on a 20 MB tmpfs: full while qemu-img converts, then while tar writes.
mkdir -p "$WORK/mnt-small"; mount -t tmpfs -o size=20m tmpfs "$WORK/mnt-small"
dib dib-qcow2-output-full.log -o "$WORK/mnt-small/img" -t qcow2 --image-cache "$cache" debian-minimal
umount "$WORK/mnt-small"; mount -t tmpfs -o size=20m tmpfs "$WORK/mnt-small"
dib dib-tar-output-full.log -o "$WORK/mnt-small/img" -t tar --image-cache "$cache" debian-minimal
umount "$WORK/mnt-small"
# Rebuilding an image a running VM still has open: qemu-img cannot take the write lock.
qemu-system-x86_64 -S -display none -monitor none -serial none \
    -drive "file=$WORK/ok/img.qcow2,format=qcow2,if=virtio" &
vm=$!
sleep 3
dib dib-qcow2-locked.log -o "$WORK/ok/img" -t qcow2 --image-cache "$cache" debian-minimal
kill "$vm"; wait "$vm" 2>/dev/null

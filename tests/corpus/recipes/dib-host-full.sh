# dib (python -m dib) on this machine with its build directory on a small tmpfs and
# an empty image cache, so debootstrap itself runs out of space. debootstrap's own
# output hides it ("Couldn't download .../Packages", "Tried to extract package");
# dib prints the end of the target's debootstrap.log, where unxz's and tar's
# "No space left on device" are.
set -u
cd "$REPO"
export DIB_RELEASE=bookworm DIB_DISTRIBUTION_MIRROR="$MIRROR"
dib() { local log=$1; shift; echo "+ python -m dib $*" > "$OUT/$log"
        "$PYTHON" -m dib "$@" >> "$OUT/$log" 2>&1; echo "exit status $?" >> "$OUT/$log"; }
for size in 40m 150m; do
    mkdir -p "$WORK/mnt-$size" && mount -t tmpfs -o "size=$size" tmpfs "$WORK/mnt-$size"
    TMPDIR=$WORK/mnt-$size dib "dib-debootstrap-full-$size.log" --no-tmpfs -o "$WORK/out-$size/img" \
        -t tar --image-cache "$WORK/cache-$size" debian-minimal
    umount "$WORK/mnt-$size"
done

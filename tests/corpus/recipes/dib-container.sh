# dib in the debian-bookworm dib layer, on a host that lacks one tool each time
# (the tool removed in the throwaway container: what a host without its package is).
set -u
layer=$(docker images --format '{{.Repository}}:{{.Tag}}' 'dib-matrix/dib-debian-bookworm' | head -1)
[ -n "$layer" ] || { echo "no dib layer: run dib-matrix hosts build debian-bookworm and a matrix run" >&2; exit 1; }
mkdir -p "$WORK/cache"
without() {  # without <log> <tool path> <dib args...>
    local log=$1 tool=$2; shift 2
    docker run --rm --network host --cap-drop ALL \
        --cap-add AUDIT_WRITE --cap-add CHOWN --cap-add DAC_OVERRIDE --cap-add FOWNER \
        --cap-add MKNOD --cap-add SETGID --cap-add SETUID --cap-add SYS_ADMIN --cap-add SYS_CHROOT \
        -v "$WORK/cache:/cache" -e DIB_RELEASE=bookworm -e DIB_DISTRIBUTION_MIRROR="$MIRROR" \
        -e PYTHONPATH=/opt/dib-matrix "$layer" \
        sh -c "rm -f $tool; exec python3 -m dib -o /tmp/out/img --image-cache /cache \"\$@\"" sh "$@" \
        > "$OUT/$log" 2>&1
    echo "exit status $?" >> "$OUT/$log"
}
without no-debootstrap.log /usr/sbin/debootstrap -t tar debian-minimal
without no-sfdisk.log "/usr/sbin/sfdisk /sbin/sfdisk" -t qcow2 debian-minimal vm
without no-qemu-img.log /usr/bin/qemu-img -t qcow2 debian-minimal

# Loop devices by hand, the way image tools use them: in a cell-like container
# (SYS_ADMIN, but no /dev/loop* nodes) and on this machine (loop devices, but no
# partition nodes for them).
set -u
img=$(docker images -q --filter label=org.dib-matrix.host=debian-bookworm | head -1)
docker run --rm --cap-add SYS_ADMIN --cap-add MKNOD "$img" bash -xc \
    'truncate -s 64M /tmp/disk.raw && losetup --show -f -P /tmp/disk.raw' > "$OUT/losetup-container.log" 2>&1
echo "exit status $?" >> "$OUT/losetup-container.log"
truncate -s 64M "$WORK/disk.raw"
printf 'label: dos\n,,L\n' | sfdisk -q "$WORK/disk.raw"
{
    set -x
    dev=$(losetup --show -f -P "$WORK/disk.raw")
    ls "${dev}"*
    mkfs.ext4 -q "${dev}p1"
    status=$?
    set +x
    losetup -d "$dev"
    echo "exit status $status"
} > "$OUT/loop-partition-host.log" 2>&1

# e2fsprogs, grub-install and qemu-img run for real on this machine (root), on image
# files only (no loop device): a filesystem shrunk below its minimum, a superblock
# wiped, an image made by this host's mke2fs read by an older distribution's e2fsck,
# grub-install in a chroot without /dev, without an EFI partition, onto a bare disk.
set -u
# run LOG COMMAND...: COMMAND's output and exit status in $OUT/LOG
run() { local log=$1; shift; echo "+ $*" > "$OUT/$log"
        "$@" < /dev/null >> "$OUT/$log" 2>&1; echo "exit status $?" >> "$OUT/$log"; }
mkdir -p "$WORK/tree/etc" && echo corpus > "$WORK/tree/etc/hostname"

# resize2fs below the filesystem's minimum size.
truncate -s 64M "$WORK/small.ext4" && mkfs.ext4 -q -d "$WORK/tree" "$WORK/small.ext4"
dd if=/dev/urandom of="$WORK/tree/blob" bs=1M count=40 status=none
truncate -s 128M "$WORK/full.ext4" && mkfs.ext4 -q -d "$WORK/tree" "$WORK/full.ext4"
run resize2fs-below-minimum.log resize2fs "$WORK/full.ext4" 20M
# e2fsck of an image whose superblock was overwritten.
cp "$WORK/small.ext4" "$WORK/wiped.ext4"
dd if=/dev/zero of="$WORK/wiped.ext4" bs=1024 seek=1 count=1 conv=notrunc status=none
run e2fsck-bad-superblock.log e2fsck -fn "$WORK/wiped.ext4"
# An image with a feature newer distributions' mke2fs turns on by default (orphan_file)
# read by bullseye's e2fsck 1.46, as a bullseye host would when checking or resizing it.
debootstrap --variant=minbase bullseye "$WORK/bullseye" "$MIRROR" > "$WORK/bullseye.log" 2>&1 || exit 1
truncate -s 64M "$WORK/bullseye/tmp/new.ext4"
mkfs.ext4 -q -O orphan_file -d "$WORK/tree" "$WORK/bullseye/tmp/new.ext4"
run e2fsck-old-unsupported-feature.log chroot "$WORK/bullseye" e2fsck -fn /tmp/new.ext4
cp "$WORK/small.ext4" "$WORK/bullseye/tmp/default.ext4"
run e2fsck-old-clean-ok.log chroot "$WORK/bullseye" e2fsck -fn /tmp/default.ext4
run e2fsck-clean-ok.log e2fsck -fn "$WORK/small.ext4"
# grub-install in a bookworm chroot: without /dev, for a platform whose modules are not
# installed, for EFI without an EFI partition, onto a disk image with no room to embed.
root=$WORK/root
debootstrap --variant=minbase --include=grub-pc-bin,grub2-common bookworm "$root" "$MIRROR" \
    > "$WORK/bookworm.log" 2>&1 || exit 1
truncate -s 64M "$root/tmp/disk.img"
run grub-install-no-dev.log chroot "$root" grub-install --target=i386-pc /tmp/disk.img
run grub-install-no-efi-modules.log chroot "$root" grub-install --target=x86_64-efi
mount --bind /dev "$root/dev" && mount -t sysfs sysfs "$root/sys" && mount -t proc proc "$root/proc"
trap 'umount -l "$root/dev" "$root/sys" "$root/proc" 2>/dev/null' EXIT
run grub-install-bare-disk.log chroot "$root" grub-install --target=i386-pc /tmp/disk.img
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    grub-efi-amd64-bin > /dev/null 2>&1
run grub-install-no-efi-dir.log chroot "$root" grub-install --target=x86_64-efi --no-nvram
# qemu-img: an input that is not there; a conversion that works.
run qemu-img-missing-input.log qemu-img convert -O qcow2 "$WORK/nosuch.raw" "$WORK/out.qcow2"
run qemu-img-convert-ok.log qemu-img convert -p -O qcow2 "$WORK/small.ext4" "$WORK/small.qcow2"

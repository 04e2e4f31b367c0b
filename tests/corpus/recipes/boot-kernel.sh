# qemu-system-x86_64 (TCG) booting the kernel of a dib vm image directly (-kernel),
# without its initramfs: virtio_blk is a module, so the kernel cannot find its root.
set -u
cd "$REPO"
export DIB_RELEASE=bookworm DIB_DISTRIBUTION_MIRROR="$MIRROR"
"$PYTHON" -m dib -o "$WORK/vm" -t raw --image-cache "$WORK/cache" debian-minimal vm \
    > "$WORK/build.log" 2>&1 || { tail -5 "$WORK/build.log" >&2; exit 1; }
read -r pstart psize <<< "$(sfdisk -J "$WORK/vm.raw" | "$PYTHON" -c 'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"]; print(p[-1]["start"], p[-1]["size"])')"
dd if="$WORK/vm.raw" of="$WORK/part.img" bs=512 skip="$pstart" count="$psize" status=none
kernel=$(debugfs -R "ls -p /boot" "$WORK/part.img" 2>/dev/null | awk -F/ '$6 ~ /^vmlinuz-/ {print $6}' | head -1)
debugfs -R "dump /boot/$kernel $WORK/vmlinuz" "$WORK/part.img" > /dev/null 2>&1
timeout 120 qemu-system-x86_64 -machine q35 -accel tcg -m 1024 -display none -no-reboot \
    -kernel "$WORK/vmlinuz" -append "console=ttyS0 root=/dev/vda1 ro" \
    -drive "file=$WORK/vm.raw,format=raw,if=virtio,snapshot=on" \
    -serial "file:$OUT/kernel-no-initrd.log" -monitor none

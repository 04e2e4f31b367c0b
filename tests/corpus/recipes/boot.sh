# Real qemu (TCG) boots through dib.boottest: a good vm image, then copies of it
# broken in one place each (edited with debugfs, never mounted), and an empty disk.
# Each $OUT/boot-*.log is the serial console, exactly what a matrix boot cell's log
# holds; boottest's verdict line goes to boot-*.verdict.
# (Removing /boot/grub/i386-pc/normal.mod does NOT break it: dib's core.img embeds normal.)
set -u
cd "$REPO"
export DIB_RELEASE=bookworm DIB_DISTRIBUTION_MIRROR="$MIRROR"
"$PYTHON" -m dib -o "$WORK/vm" -t raw --image-cache "$WORK/cache" debian-minimal vm boot-marker \
    > "$OUT/dib-vm-raw.log" 2>&1
echo "exit status $?" >> "$OUT/dib-vm-raw.log"
boot() {  # boot <name> <image> [boottest options]
    local name=$1 image=$2; shift 2
    "$PYTHON" -m dib.boottest "$image" --serial-log "$OUT/boot-$name.log" "$@" \
        > "$OUT/boot-$name.verdict" 2>&1
}
boot ok "$WORK/vm.raw" --timeout 600
boot timeout "$WORK/vm.raw" --timeout 20
qemu-img create -f raw "$WORK/empty.raw" 64M > /dev/null
boot empty-disk "$WORK/empty.raw" --timeout 120

# variant <name> <debugfs-edit-function>: a copy of vm.raw whose root partition is edited
start=$(sfdisk -J "$WORK/vm.raw" | "$PYTHON" -c 'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"]; print(p[-1]["start"], p[-1]["size"])')
read -r pstart psize <<< "$start"
variant() {
    local name=$1 edit=$2
    cp --sparse=always "$WORK/vm.raw" "$WORK/$name.raw"
    dd if="$WORK/$name.raw" of="$WORK/part.img" bs=512 skip="$pstart" count="$psize" status=none
    "$edit" "$WORK/part.img"
    dd if="$WORK/part.img" of="$WORK/$name.raw" bs=512 seek="$pstart" conv=notrunc,sparse status=none
    rm -f "$WORK/part.img"
}
cmdline() {  # cmdline <part> <sed expression on grub.cfg>
    debugfs -R "cat /boot/grub/grub.cfg" "$1" 2>/dev/null | sed -e "$2" > "$WORK/grub.cfg"
    debugfs -w -R "rm /boot/grub/grub.cfg" "$1" > /dev/null 2>&1
    debugfs -w -R "write $WORK/grub.cfg /boot/grub/grub.cfg" "$1" > /dev/null 2>&1
}
edit_init_false() { cmdline "$1" 's|^\(\s*linux\s.*\)$|\1 init=/bin/false|'; }
edit_bad_root() { cmdline "$1" 's|root=[^ ]*|root=UUID=00000000-1111-2222-3333-444444444444|'; }
edit_no_kernel() {
    local k
    for k in $(debugfs -R "ls -p /boot" "$1" 2>/dev/null | awk -F/ '$6 ~ /^vmlinuz-/ {print $6}'); do
        debugfs -w -R "rm /boot/$k" "$1" > /dev/null 2>&1
    done
}
variant init-false edit_init_false
boot kernel-panic "$WORK/init-false.raw" --timeout 300
variant bad-root edit_bad_root
boot root-not-found "$WORK/bad-root.raw" --timeout 300
variant no-kernel edit_no_kernel
boot grub-no-kernel "$WORK/no-kernel.raw" --timeout 120

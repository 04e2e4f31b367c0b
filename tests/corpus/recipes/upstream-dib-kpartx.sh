# diskimage-builder's vm path with kpartx installed (apt-get install kpartx on this
# machine): it gets to device-mapper, which a container machine does not have.
set -u
venv=${DIB_VENV:-/tmp/dibvenv}
[ -x "$venv/bin/disk-image-create" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q diskimage-builder==3.43.0; }
command -v kpartx > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q kpartx > "$WORK/apt.txt" 2>&1
export PATH="$venv/bin:$PATH" DIB_RELEASE=bookworm DIB_DISTRIBUTION_MIRROR="$MIRROR"
export DIB_IMAGE_CACHE=$WORK/cache
DIB_DEBIAN_SECURITY_MIRROR=$(grep -rhE '^(deb|URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian-security' | head -1)
export DIB_DEBIAN_SECURITY_MIRROR
echo "+ disk-image-create -o $WORK/vm vm debian-minimal" > "$OUT/dic-vm-kpartx.log"
disk-image-create -o "$WORK/vm" vm debian-minimal >> "$OUT/dic-vm-kpartx.log" 2>&1
echo "exit status $?" >> "$OUT/dic-vm-kpartx.log"

# apt, dpkg, mount, chroot and dib inside containers of the debian-bookworm host
# image, as a cell would see them; a loopback proxy (badmirror.py) breaks the mirror.
set -u
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
img=$(docker images -q --filter label=org.dib-matrix.host=debian-bookworm | head -1)
if [ -z "$img" ]; then
    (cd "$REPO" && "$PYTHON" -m matrix.cli hosts build debian-bookworm)
    img=$(docker images -q --filter label=org.dib-matrix.host=debian-bookworm | head -1)
fi
layer=$(docker images --format '{{.Repository}}:{{.Tag}}' 'dib-matrix/dib-debian-bookworm' | head -1)
# incontainer <log> <docker run options...> -- <bash script>
incontainer() {
    local log=$1; shift; local opts=()
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done; shift
    docker run --rm --network host "${opts[@]}" "$img" bash -xc "$1" > "$OUT/$log" 2>&1
    echo "exit status $?" >> "$OUT/$log"
}
src() { echo "rm -f /etc/apt/sources.list.d/*; echo 'deb $1 $2 main' > /etc/apt/sources.list"; }

incontainer apt-forky-expired.log -- "$(src "$MIRROR" forky); apt-get update"
incontainer apt-unable-to-locate.log -- "$(src "$MIRROR" bookworm); apt-get update -qq && apt-get install -y nosuchpkg-corpus"
incontainer apt-no-candidate.log -- "$(src "$MIRROR" bookworm); apt-get update -qq && apt-get install -y python"
incontainer apt-connection-refused.log -- "$(src http://127.0.0.1:9/debian bookworm); apt-get update && apt-get install -y less"
incontainer apt-name-not-resolving.log -- "$(src http://nonexistent.invalid/debian bookworm); apt-get update && apt-get install -y less"
incontainer apt-broken-packages.log -- "$(src "$MIRROR" bookworm); apt-get update -qq && apt-get install -y systemd-sysv sysvinit-core"
# What a dpkg killed half-way leaves behind: a pending entry in /var/lib/dpkg/updates.
incontainer apt-dpkg-interrupted.log -- "$(src "$MIRROR" bookworm); apt-get update -qq; printf 'Package: less\nStatus: install ok half-installed\n' > /var/lib/dpkg/updates/0001; apt-get install -y less"

port=18081
for mode in 404-pool corrupt-index badsig; do
    python3 "$here/badmirror.py" "$port" "$MIRROR" "$mode" &
    proxy=$!
    sleep 1
    incontainer "apt-proxy-$mode.log" -- "$(src "http://127.0.0.1:$port/debian" bookworm); apt-get update && apt-get install -y less"
    kill "$proxy"; wait "$proxy" 2>/dev/null
done

# Default capabilities only (no SYS_ADMIN): mount, then a whole dib build.
incontainer cap-mount.log -- "mount -t tmpfs tmpfs /mnt"
incontainer cap-mknod.log --cap-drop MKNOD -- "mknod /tmp/loop9 b 7 9"
incontainer cap-chroot.log --cap-drop SYS_CHROOT -- "mkdir -p /tmp/root && cp -a /bin /lib /lib64 /usr /tmp/root/ 2>/dev/null; chroot /tmp/root /bin/true"
if [ -n "$layer" ]; then
    docker run --rm --network host -e DIB_RELEASE=bookworm -e DIB_DISTRIBUTION_MIRROR="$MIRROR" \
        -e PYTHONPATH=/opt/dib-matrix "$layer" \
        python3 -m dib -o /tmp/out/bookworm -t tar debian-minimal > "$OUT/cap-dib-default-caps.log" 2>&1
    echo "exit status $?" >> "$OUT/cap-dib-default-caps.log"
fi

# A pinned run's repository view (matrix/snapshot/view.py), the cells' http proxy, answers
# a file its snapshot lacks with "404 Not in snapshot". badmirror.py (not-in-snapshot)
# answers the same way, as the http proxy of apt in a container of the debian-bookworm
# host image and of a whole dib build in its dib layer. (debootstrap alone prints only
# "Couldn't download packages: X", as for a refused connection: wget's 404 and its reason
# are in the target's debootstrap.log, which dib prints the end of.)
set -u
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
img=$(docker images -q --filter label=org.dib-matrix.host=debian-bookworm | head -1)
layer=$(docker images --format '{{.Repository}}:{{.Tag}}' 'dib-matrix/dib-debian-bookworm' | head -1)
port=18082
proxy_url="http://127.0.0.1:$port"
# lacking <package-or-dists-path> <log> <command...>: the command with the view as its proxy
lacking() {
    local lacks=$1 log=$2; shift 2
    python3 "$here/badmirror.py" "$port" "$MIRROR" not-in-snapshot "$lacks" &
    local proxy=$!
    sleep 1
    echo "+ $*" > "$OUT/$log"
    "$@" >> "$OUT/$log" 2>&1
    echo "exit status $?" >> "$OUT/$log"
    kill "$proxy"; wait "$proxy" 2>/dev/null
}
src() { echo "rm -f /etc/apt/sources.list.d/*; echo 'deb $MIRROR bookworm main' > /etc/apt/sources.list"; }

# apt in the host image: the snapshot lacks the package installed, then the amd64 Packages index.
lacking less apt-lacks-less.log docker run --rm --network host -e http_proxy="$proxy_url" "$img" \
    bash -xc "$(src); apt-get update && apt-get install -y less"
# apt reads indices by hash (dists/bookworm/main/binary-amd64/by-hash/SHA256/...)
lacking main/binary-amd64/ apt-lacks-index.log docker run --rm --network host \
    -e http_proxy="$proxy_url" "$img" bash -xc "$(src); apt-get update && apt-get install -y less"
# dib (its .deb prefetch over urllib, then debootstrap) in the dib layer: a package of minbase.
if [ -n "$layer" ]; then
    caps=(--cap-drop ALL)  # a cell's own (matrix/containers/engine.py CELL_CAPABILITIES)
    for cap in AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER MKNOD SETGID SETUID SYS_ADMIN SYS_CHROOT; do
        caps+=(--cap-add "$cap")
    done
    lacking mawk dib-lacks-mawk.log docker run --rm --network host "${caps[@]}" \
        -e http_proxy="$proxy_url" -e DIB_RELEASE=bookworm -e DIB_DISTRIBUTION_MIRROR="$MIRROR" \
        -e PYTHONPATH=/opt/dib-matrix "$layer" \
        python3 -m dib -o /tmp/out/bookworm -t tar debian-minimal
fi

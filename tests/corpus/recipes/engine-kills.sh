# A cell's container ended by the kernel or from outside, through the engine's own cell
# runner (engine_cell.py -> matrix.containers.engine.run_cell), on an image imported
# from a fresh debootstrap: the cgroup's OOM killer during apt-get update (the engine's
# OOMKilled flag), and a docker kill from outside (exit status 137, no OOM).
set -u
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
root=$WORK/root
debootstrap --variant=minbase bookworm "$root" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 || exit 1
image=dib-matrix-corpus/bookworm-minbase:$(date +%s)
tar -C "$root" -c . | docker import --change 'LABEL org.dib-matrix.corpus=1' - "$image" > /dev/null
trap 'docker rmi -f "$image" > /dev/null 2>&1' EXIT
apt_script="set -e; echo 'deb $MIRROR bookworm main' > /etc/apt/sources.list; apt-get update; apt-get install -y python3"
(cd "$REPO" && "$PYTHON" "$here/engine_cell.py" "$image" "$OUT/cell-oom-killed.log" --memory 40m \
    -- bash -c "$apt_script")
(cd "$REPO" && "$PYTHON" "$here/engine_cell.py" "$image" "$OUT/cell-killed-from-outside.log" \
    --kill-after 4 -- bash -c "echo 'unpacking the base system'; sleep 120")

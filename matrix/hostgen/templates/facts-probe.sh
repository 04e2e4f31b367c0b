# Host facts probe: runs once per host image (sh -c), prints key=value lines.
# POSIX sh only: it must work before anything is known about the image.
for tool in debootstrap mmdebstrap dnf yum zypper runuser qemu-img tox python3; do
    if command -v "$tool" >/dev/null 2>&1; then
        echo "tool=$tool"
    fi
done
if [ -d /usr/share/debootstrap/scripts ]; then
    for script in /usr/share/debootstrap/scripts/*; do
        [ -e "$script" ] && echo "debootstrap_script=${script##*/}"
    done
fi
echo "arch=$(uname -m)"
if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import sys; print("python=%d.%d.%d" % sys.version_info[:3])' 2>/dev/null
fi
if command -v tox >/dev/null 2>&1; then
    # "4.11.4 from /usr/lib/..." (tox 4, possibly after "ROOT: ..." notices)
    # or "3.21.4 imported from ..." (tox 3): the first line starting with a version.
    echo "tox=$(tox --version 2>/dev/null | grep -E '^[0-9]+\.[0-9]' | head -n 1)"
fi
if [ -r /etc/os-release ]; then
    (. /etc/os-release && echo "os_id=${ID:-}" && echo "os_version=${VERSION_ID:-${VERSION_CODENAME:-}}")
fi
exit 0

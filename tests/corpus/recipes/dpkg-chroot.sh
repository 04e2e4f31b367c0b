# dpkg and apt inside a freshly debootstrapped bookworm chroot (this machine, root):
# maintainer scripts that fail, dependency problems, a read-only filesystem, a conffile
# prompt nobody answers, file conflicts, a foreign architecture, a truncated .deb.
# The packages are built here with dpkg-deb from a control file and a script.
set -u
root=$WORK/root
debootstrap --variant=minbase bookworm "$root" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 || exit 1
mount -t proc proc "$root/proc"
trap 'umount -l "$root/proc" "$root/var/lib/dpkg" "$root/usr" 2>/dev/null' EXIT

# deb NAME VERSION [ARCH] [DEPENDS] [POSTINST-BODY] [FILE]: a package in $root/tmp/NAME_VERSION.deb
deb() {
    local name=$1 version=$2 arch=${3:-all} depends=${4:-} postinst=${5:-} file=${6:-}
    local dir=$WORK/pkg/$name-$version
    mkdir -p "$dir/DEBIAN" "$dir/usr/share/doc/$name"
    printf 'Package: %s\nVersion: %s\nArchitecture: %s\nMaintainer: corpus <corpus@example.invalid>\nDescription: corpus package\n' \
        "$name" "$version" "$arch" > "$dir/DEBIAN/control"
    [ -n "$depends" ] && printf 'Depends: %s\n' "$depends" >> "$dir/DEBIAN/control"
    if [ -n "$postinst" ]; then
        printf '#!/bin/sh\nset -e\n%s\n' "$postinst" > "$dir/DEBIAN/postinst"
        chmod 755 "$dir/DEBIAN/postinst"
    fi
    if [ -n "$file" ]; then
        mkdir -p "$dir$(dirname "$file")"
        echo "$name" > "$dir$file"
        case $file in /etc/*) echo "$file" > "$dir/DEBIAN/conffiles" ;; esac
    fi
    echo "$name $version" > "$dir/usr/share/doc/$name/README"
    dpkg-deb --root-owner-group --build "$dir" "$root/tmp/${name}_$version.deb" > /dev/null
}
# run_in LOG COMMAND...: run COMMAND in the chroot, its output (and exit status) in $OUT/LOG
run_in() {
    local log=$1; shift
    echo "+ $*" > "$OUT/$log"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@" \
        < /dev/null >> "$OUT/$log" 2>&1
    echo "exit status $?" >> "$OUT/$log"
}

# A postinst that exits 1 (apt installs it, dpkg runs the script), and a package that
# depends on it: dpkg leaves the dependant unconfigured.
deb corpus-daemon 1.0 all "" 'echo "corpus-daemon: configuring /etc/corpus-daemon.conf"; test -s /etc/corpus-daemon.conf'
deb corpus-tools 1.0 all "corpus-daemon"
run_in apt-postinst-exit1.log apt-get install -y /tmp/corpus-daemon_1.0.deb /tmp/corpus-tools_1.0.deb
run_in dpkg-configure-pending.log dpkg --configure -a
chroot "$root" dpkg --purge --force-all corpus-tools corpus-daemon > /dev/null 2>&1
# A postinst whose helper the kernel kills (SIGKILL from a timeout).
deb corpus-slow 1.0 all "" 'timeout -s KILL 1 sleep 30'
run_in dpkg-postinst-killed.log dpkg -i /tmp/corpus-slow_1.0.deb
chroot "$root" dpkg --purge --force-all corpus-slow > /dev/null 2>&1
# dpkg -i of a package whose dependency is not installed.
deb corpus-app 1.0 all "corpus-missing-lib (>= 2)"
run_in dpkg-dependency-problems.log dpkg -i /tmp/corpus-app_1.0.deb
chroot "$root" dpkg --purge --force-all corpus-app > /dev/null 2>&1
# Two packages shipping the same file.
deb corpus-one 1.0 all "" "" /usr/bin/corpus-tool
deb corpus-two 1.0 all "" "" /usr/bin/corpus-tool
run_in dpkg-file-conflict.log dpkg -i /tmp/corpus-one_1.0.deb /tmp/corpus-two_1.0.deb
chroot "$root" dpkg --purge --force-all corpus-one corpus-two > /dev/null 2>&1
# A package for another architecture.
deb corpus-native 1.0 arm64
run_in dpkg-wrong-architecture.log dpkg -i /tmp/corpus-native_1.0.deb
# A truncated package (a download cut short).
deb corpus-big 1.0 all "" "" /usr/share/corpus-big/data
head -c 700 "$root/tmp/corpus-big_1.0.deb" > "$root/tmp/corpus-cut_1.0.deb"
run_in dpkg-truncated-deb.log dpkg -i /tmp/corpus-cut_1.0.deb
# A configuration file changed locally, a new version that changes it too, no terminal.
deb corpus-conf 1.0 all "" "" /etc/corpus.conf
run_in dpkg-conf-v1.log dpkg -i /tmp/corpus-conf_1.0.deb
echo "local change" >> "$root/etc/corpus.conf"
rm -rf "$WORK/pkg/corpus-conf-1.0"
deb corpus-conf 2.0 all "" "" /etc/corpus.conf
echo "option = 2" >> "$WORK/pkg/corpus-conf-2.0/etc/corpus.conf"
dpkg-deb --root-owner-group --build "$WORK/pkg/corpus-conf-2.0" "$root/tmp/corpus-conf_2.0.deb" > /dev/null
run_in dpkg-conffile-prompt.log dpkg -i /tmp/corpus-conf_2.0.deb
chroot "$root" dpkg --purge --force-all corpus-conf > /dev/null 2>&1
# The package database on a read-only filesystem, then /usr read-only.
mount --bind "$root/var/lib/dpkg" "$root/var/lib/dpkg"
mount -o remount,ro,bind "$root/var/lib/dpkg"
run_in apt-readonly-dpkg-db.log apt-get install -y /tmp/corpus-tools_1.0.deb /tmp/corpus-daemon_1.0.deb
umount "$root/var/lib/dpkg"
mount --bind "$root/usr" "$root/usr"
mount -o remount,ro,bind "$root/usr"
run_in dpkg-readonly-usr.log dpkg -i /tmp/corpus-one_1.0.deb
umount "$root/usr"
# Success: a package with a working postinst, through apt.
deb corpus-good 1.0 all "" 'echo "corpus-good: configured"'
run_in apt-install-local-ok.log apt-get install -y /tmp/corpus-good_1.0.deb

# diskimage-builder's debian-minimal settings, with its names and defaults, except the
# mirrors: by default the machine's own apt sources name them (dib never guesses a
# public host). DIB_APT_SOURCES_CONF ("NAME:deb URI SUITE COMPONENTS" lines, one
# sources.list.d/NAME.list each) is written by root.d/75-debian-minimal-baseinstall.
export EFI_BOOT_DIR="EFI/debian"
export DIB_DEBOOTSTRAP_DEFAULT_LOCALE=${DIB_DEBOOTSTRAP_DEFAULT_LOCALE:-C.UTF-8}
export DIB_NETWORK_INTERFACE_NAMES=${DIB_NETWORK_INTERFACE_NAMES:-eth0 eth1}
# Installed right after debootstrap (root.d/75-debian-minimal-baseinstall); dib's
# debootstrap takes them in already, into its cached base.
export DIB_DEBIAN_MINIMAL_BASE_PACKAGES="systemd-sysv busybox sudo gnupg2 python3"
export DIB_DEBOOTSTRAP_INCLUDE="${DIB_DEBOOTSTRAP_INCLUDE:+$DIB_DEBOOTSTRAP_INCLUDE }$DIB_DEBIAN_MINIMAL_BASE_PACKAGES"

if [ -n "${DIB_DEBIAN_DISTRIBUTION_MIRROR:-}" ]; then
    DIB_DISTRIBUTION_MIRROR=$DIB_DEBIAN_DISTRIBUTION_MIRROR
fi
# Empty when none is known: debootstrap then fails with the reason (no mirror).
DIB_DISTRIBUTION_MIRROR=${DIB_DISTRIBUTION_MIRROR:-$("$_DIB_PYTHON" -m dib.mirror debian 2>/dev/null || true)}
export DIB_DISTRIBUTION_MIRROR
# Without a known security archive the sources carry no security line.
DIB_DEBIAN_SECURITY_MIRROR=${DIB_DEBIAN_SECURITY_MIRROR:-$("$_DIB_PYTHON" -m dib.mirror debian-security 2>/dev/null || true)}
export DIB_DEBIAN_SECURITY_MIRROR

export DIB_DEBIAN_COMPONENTS_WS=${DIB_DEBIAN_COMPONENTS//,/ }
_dib_suite_only=
case "$DIB_RELEASE" in
    testing|unstable|sid) _dib_suite_only=1 ;;
esac
DIB_APT_SOURCES_CONF_DEFAULT="default:deb ${DIB_DISTRIBUTION_MIRROR} ${DIB_RELEASE} ${DIB_DEBIAN_COMPONENTS_WS}"
if [ -z "$_dib_suite_only" ]; then
    DIB_APT_SOURCES_CONF_DEFAULT+="
updates:deb ${DIB_DISTRIBUTION_MIRROR} ${DIB_RELEASE}-updates ${DIB_DEBIAN_COMPONENTS_WS}"
    if [ -n "$DIB_DEBIAN_SECURITY_MIRROR" ]; then
        DIB_APT_SOURCES_CONF_DEFAULT+="
security:deb ${DIB_DEBIAN_SECURITY_MIRROR} ${DIB_RELEASE}-security${DIB_DEBIAN_SECURITY_SUBPATH:-} ${DIB_DEBIAN_COMPONENTS_WS}"
    fi
fi
unset _dib_suite_only
export DIB_APT_SOURCES_CONF=${DIB_APT_SOURCES_CONF:-$DIB_APT_SOURCES_CONF_DEFAULT}

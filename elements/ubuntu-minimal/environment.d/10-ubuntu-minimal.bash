export DISTRO_NAME=ubuntu
export DIB_RELEASE=${DIB_RELEASE:-noble}
# As diskimage-builder's element of this name: read by dib-init-system and the
# service elements.
export DIB_INIT_SYSTEM=systemd
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main,universe}
# An Ubuntu-specific mirror wins over the general one (which usually points at Debian).
export DIB_DISTRIBUTION_MIRROR=${DIB_UBUNTU_MIRROR:-${DIB_DISTRIBUTION_MIRROR:-}}

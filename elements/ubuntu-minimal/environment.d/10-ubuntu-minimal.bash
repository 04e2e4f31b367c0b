export DISTRO_NAME=ubuntu
export DIB_RELEASE=${DIB_RELEASE:-noble}
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main,universe}
# An Ubuntu-specific mirror wins over the general one (which usually points at Debian).
export DIB_DISTRIBUTION_MIRROR=${DIB_UBUNTU_MIRROR:-${DIB_DISTRIBUTION_MIRROR:-}}

export DISTRO_NAME=opensuse
export DIB_RELEASE=${DIB_RELEASE:-15.6}

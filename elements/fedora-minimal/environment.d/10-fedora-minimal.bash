export DISTRO_NAME=fedora
export DIB_RELEASE=${DIB_RELEASE:-43}

export DISTRO_NAME=centos
export DIB_RELEASE=${DIB_RELEASE:-9-stream}
# As diskimage-builder's element of this name: read by dib-init-system and the
# service elements.
export DIB_INIT_SYSTEM=systemd

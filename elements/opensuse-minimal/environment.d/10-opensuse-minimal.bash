export DISTRO_NAME=opensuse
DIB_RELEASE=${DIB_RELEASE:-15.6}
# As diskimage-builder's element of this name: the release in lower case (Tumbleweed).
export DIB_RELEASE=${DIB_RELEASE,,}
# As diskimage-builder's element of this name: read by dib-init-system and the
# service elements.
export DIB_INIT_SYSTEM=systemd

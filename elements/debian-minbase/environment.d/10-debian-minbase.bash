export DISTRO_NAME=debian
export DIB_RELEASE=${DIB_RELEASE:-bookworm}
# As diskimage-builder's element of this name: read by dib-init-system and the
# service elements.
export DIB_INIT_SYSTEM=systemd
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main}

"""Partitioned disk images without loop devices: layout, geometry, plan, GRUB pieces.

The flow of one ``vm`` build:

- ``layout``: read and validate the block-device YAML (diskimage-builder's format,
  the ``local_loop`` + ``partitioning`` subset), collecting every problem first.
- ``plan`` (extra-data.d, outside the chroot): give each filesystem its UUID and
  label, write ``/etc/fstab``, save the plan under ``$TMP_BUILD_DIR/block-device``.
- ``grub`` (pre-finalise.d): GRUB's config and core images, made with the
  *target's* GRUB tools in the chroot.
- ``geometry``: pure arithmetic, partition offsets for a disk size.
- ``dib.disk`` (at output time): filesystems written from directories straight
  into the image file at their offsets, partition table by ``sfdisk``, BIOS boot
  code patched in (``biosboot``).
"""

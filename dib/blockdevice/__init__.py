"""Partitioned disk images without loop devices: layout, geometry, plan, GRUB pieces.

The flow of one disk build (whichever vm/bootloader elements it has, dib's or
diskimage-builder's):

- ``config``: find the layout as disk-image-create does (``DIB_BLOCK_DEVICE_CONFIG``,
  an element's ``block-device-default.yaml``, ``DIB_BLOCK_DEVICE``).
- ``layout``: read and validate the block-device YAML (diskimage-builder's format,
  the ``local_loop`` + ``partitioning`` subset), collecting every problem first.
- ``stage`` (dib's core, before the first hook): ``plan`` gives each filesystem its
  UUID and label and is saved under ``$TMP_BUILD_DIR/block-device``; the stage exports
  ``IMAGE_BLOCK_DEVICE(S)``/``DIB_ROOT_LABEL``..., writes ``/etc/fstab`` after root.d
  and block-device.d, and puts ``shims/`` (grub-probe, grub-mkconfig, grub-mkrelpath,
  grub-install) on the PATH of in-image hooks.
- ``grub``: GRUB's config and core images made with the *target's* GRUB tools in the
  chroot: by dib's bootloader element (pre-finalise.d), or, for diskimage-builder's
  bootloader, by ``grubinstall`` from the grub-install requests it recorded.
- ``geometry``: pure arithmetic, partition offsets for a disk size.
- ``dib.blockdevice.disk`` (at output time): filesystems written from directories straight
  into the image file at their offsets, partition table by ``sfdisk``, BIOS boot
  code patched in (``biosboot``).
"""

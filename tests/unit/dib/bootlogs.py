"""Excerpts of real serial consoles and what the boot watcher makes of them: per case the
log, how the run ended, the evidence line and the category the catalogue names for it."""

# Excerpts of real serial logs from bookworm vm images under qemu TCG (SeaBIOS and OVMF).
BIOS_OK = (
    "\x1b[2J\x1b[1;1HSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
    "Booting from Hard Disk...\r\n"
    "GRUB loading...\r\n"
    "Welcome to GRUB!\r\n"
    "\x1b[0m\x1b[30m\x1b[47mLoading Linux ...\r\n"
    "[    0.000000] Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org)\r\n"
    "Begin: Mounting root file system ... done.\r\n"
    "[  OK  ] Reached target multi-user.target - Multi-User System.\r\n"
    "DIB-BOOT-MARKER-OK kernel=6.1.0-50-amd64 root=/dev/vda1 root-bytes=3184697344\r\n"
)
UEFI_NO_BOOTLOADER = (
    'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x1,0x0): '
    "Not Found\r\n"
    "BdsDxe: No bootable option or device was found.\r\n"
    "UEFI Interactive Shell v2.2\r\n"
    "Press ESC in 5 seconds to skip startup.nsh or any other key to continue.\r\n"
)
BIOS_NOT_BOOTABLE = (
    "SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
    "Booting from Hard Disk...\r\n"
    "Boot failed: not a bootable disk\r\n"
    "\r\n"
    "No bootable device.  Retrying in 60 seconds.\r\n"
)
ROOT_MISSING = (
    "[    1.903210] Run /init as init process\r\n"
    "Begin: Running /scripts/local-block ... done.\r\n"
    "Gave up waiting for root file system device.  Common problems:\r\n"
    " - Boot args (cat /proc/cmdline)\r\n"
    "ALERT!  UUID=00000000-1111-2222-3333-444444444444 does not exist.  Dropping to a shell!\r\n"
    "(initramfs) "
)
NO_ROOT_PANIC = (
    "[    5.354426] No filesystem could mount root, tried: \r\n"
    "[    5.354622] Kernel panic - not syncing: VFS: Unable to mount root fs on "
    "unknown-block(0,0)\r\n"
    "[    5.355184] Call Trace:\r\n"
)
INIT_PANIC = (
    "[    0.000000] Linux version 6.1.0-50-amd64\r\n"
    "[    3.100000] Run /init as init process\r\n"
    "[    6.661234] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n"
    "[    6.662000] CPU: 0 PID: 1 Comm: false Not tainted 6.1.0-50-amd64\r\n"
)
GRUB_ERROR = (
    "Booting from Hard Disk...\r\n"
    "GRUB loading...\r\n"
    "Welcome to GRUB!\r\n"
    "error: file `/vmlinuz' not found.\r\n"
    "error: you need to load the kernel first.\r\n"
    "Press any key to continue...\r\n"
)
GRUB_RESCUE = "GRUB loading.\r\nWelcome to GRUB!\r\nerror: unknown filesystem.\r\ngrub rescue> "


UEFI_NO_BOOTLOADER_LINE = "BdsDxe: No bootable option or device was found."
ROOT_MISSING_LINE = (
    "ALERT!  UUID=00000000-1111-2222-3333-444444444444 does not exist.  Dropping to a shell!"
)
NO_ROOT_PANIC_LINE = (
    "[    5.354622] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
)
INIT_PANIC_LINE = (
    "[    6.661234] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
)
INIT_LAST_LINE = "[    3.100000] Run /init as init process"

# (serial log, how the run ended, the evidence line, the catalogue's category for it)
CASES = {
    "uefi-nothing-to-boot": (
        UEFI_NO_BOOTLOADER,
        {},
        UEFI_NO_BOOTLOADER_LINE,
        "no-bootloader",
    ),
    "bios-not-bootable": (
        BIOS_NOT_BOOTABLE,
        {},
        "Boot failed: not a bootable disk",
        "no-bootloader",
    ),
    "root-missing": (ROOT_MISSING, {}, ROOT_MISSING_LINE, "root-fs-not-found"),
    "panic-for-a-missing-root": (NO_ROOT_PANIC, {}, NO_ROOT_PANIC_LINE, "root-fs-not-found"),
    "init-panic": (INIT_PANIC, {}, INIT_PANIC_LINE, "kernel-panic"),
    "grub-error": (GRUB_ERROR, {}, "error: file `/vmlinuz' not found.", "bootloader-error"),
    "grub-rescue": (GRUB_RESCUE, {}, "grub rescue>", "bootloader-error"),
    "silence-after-handoff": (
        "SeaBIOS (version 1.16.2)\r\nBooting from Hard Disk...\r\n",
        {},
        "boot: the firmware handed over to the disk, then nothing for 0 s: "
        "Booting from Hard Disk...",
        "no-bootloader",
    ),
    "reset-before-any-output": (
        "",
        {"timed_out": False, "exited": True},
        "boot: the machine reset during the nothing stage",
        "no-bootloader",
    ),
    "reset-in-the-firmware": (
        "SeaBIOS (version 1.16.2)\r\nBooting from Hard Disk...\r\n",
        {"timed_out": False, "exited": True},
        "boot: the machine reset during the firmware stage; last line: Booting from Hard Disk...",
        "no-bootloader",
    ),
    "reset-in-grub": (
        "Booting from Hard Disk...\r\nGRUB loading.\r\n",
        {"timed_out": False, "exited": True},
        "boot: the machine reset during the bootloader stage; last line: GRUB loading.",
        "bootloader-error",
    ),
    "reset-in-the-kernel": (
        INIT_PANIC.split("[    6.66")[0],
        {"timed_out": False, "exited": True},
        f"boot: the machine reset during the kernel stage; last line: {INIT_LAST_LINE}",
        "vm-reset",
    ),
    "reset-in-the-initramfs": (
        "[    1.0] Linux version 6.1\r\nBegin: Loading essential drivers ... done.\r\n",
        {"timed_out": False, "exited": True},
        "boot: the machine reset during the initramfs stage; "
        "last line: Begin: Loading essential drivers ... done.",
        "vm-reset",
    ),
    "reset-in-userspace": (
        "[  OK  ] Reached target basic.target\r\n",
        {"timed_out": False, "exited": True},
        "boot: the machine reset during the userspace stage; "
        "last line: [  OK  ] Reached target basic.target",
        "vm-reset",
    ),
    "no-marker": (
        BIOS_OK.replace("DIB-BOOT-MARKER-OK", "something else"),
        {},
        "boot: no marker after 0 s; furthest stage: userspace; "
        "last line: something else kernel=6.1.0-50-amd64 root=/dev/vda1 root-bytes=3184697344",
        "boot-timeout",
    ),
    "no-output-at-all": (
        "",
        {},
        "boot: no marker after 0 s; furthest stage: nothing",
        "boot-timeout",
    ),
}

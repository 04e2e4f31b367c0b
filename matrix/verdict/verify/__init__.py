"""Verify a build cell's images on the orchestrating machine: green means verified.

Runs after a build container exited 0 and before its cell may say ``success``.
The stages, each a module:

1. :mod:`.expect` -- what the target's images must be: the os-release ID of its base
   element, its release (DIB_RELEASE or the base element's default) and, for disk
   images, the layout its elements plan; beside a disk image, the layout dib recorded
   (``<target>.layout.json``).
2. :mod:`.tarimage` -- a tar image (tar, tgz, tar.gz) read in one pass with
   :mod:`tarfile`, never extracted: ``etc/os-release`` (through its usual symlink to
   ``usr/lib/os-release``) and the dpkg database (``var/lib/dpkg/status``).
3. :mod:`.diskimage` -- a disk image (raw, qcow2 and the other qemu-img formats) read
   without a loop device: ``qemu-img check`` (``qemu-img info`` for raw), the
   partition table (``sfdisk --json`` on the image's first and last MiB), each
   filesystem's label from its superblock, and os-release and the dpkg database of the
   root filesystem through ``debugfs`` (a qcow2's root filesystem is first copied into
   a sparse raw file in a temporary directory of the run directory).
4. :mod:`.checks` -- each check compares those facts with the expectation (and the
   packages with ``<target>.packages``) and words what it found; a failed check's
   detail reads on its own (``image is bookworm, target wants forky``).
5. :mod:`.images` -- :func:`verify_images` runs the checks of every image of a cell
   under one deadline (what the cell's container left of its timeout), each timed,
   none raising; :func:`summary` is the first failed check as one line,
   ``verify: <name>: <detail>``.

Beneath them: :mod:`.parse` (os-release, dpkg status and manifest text),
:mod:`.tools` (every tool runs with an argv list, the deadline and bounded output) and
:mod:`.limits` (the byte limits, the deadline, :class:`~.limits.VerifyError`).
"""

from .expect import Expectation, PlannedLayout, PlannedPartition, expectation_for
from .images import summary, verify_images
from .limits import Deadline

__all__ = [
    "Deadline",
    "Expectation",
    "PlannedLayout",
    "PlannedPartition",
    "expectation_for",
    "summary",
    "verify_images",
]

"""Labels and names of the engine objects dib-matrix creates.

``clean`` finds exactly its own containers, images and volumes by these labels,
so every module that creates an engine object takes its labels from here.
"""

LABEL_RUN = "org.dib-matrix.run"
LABEL_CELL = "org.dib-matrix.cell"
LABEL_CACHE = "org.dib-matrix.cache"
LABEL_HOST = "org.dib-matrix.host"
LABEL_ROLE = "org.dib-matrix.role"  # "base" (imported rootfs), "host", "stage" or a dib layer
LABEL_DIGEST = "org.dib-matrix.digest"
# The repository of the host images last-good cells ran on (matrix.run.lastgoodimages):
# dib-matrix/last-good-<host>:<image id>; never pruned as a host's older tag.
LAST_GOOD_REPOSITORY_PREFIX = "dib-matrix/last-good-"


def cache_volume_name(host: str) -> str:
    """The host's dib image-cache volume, kept across runs (warm builds)."""
    return f"dib-matrix-cache-{host}"

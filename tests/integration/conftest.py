import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="integration tests need root (debootstrap, chroot, mounts)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory):
    """One dib image cache for the whole session: the first build is cold, later ones warm."""
    return tmp_path_factory.mktemp("image-cache")

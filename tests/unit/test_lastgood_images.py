"""Last-good host images stay in the engine for investigations
(``matrix.run.lastgoodimages``), and hostgen's pruning leaves them alone.

Hostile classes covered: a last-good naming an image the engine no longer has, an
engine that fails mid-way (a warning, never a crash at the end of a run), tags of other
hosts and other repositories never touched, a host name that is no name never becomes
a repository.
"""

from __future__ import annotations

import docker.errors
import pytest

from matrix.containers.leases import Registry
from matrix.hostgen import build
from matrix.run import lastgoodimages
from results import lastgood
from results.archive import OutDir
from tests.archivefactory import stored_run
from tests.unit.fakeengine import FakeImage, FakeImages

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


class TaggingImages(FakeImages):
    """FakeImages with ``image.tag`` and ``list(name=...)``."""

    def get(self, reference):
        image = super().get(reference)
        image.tag = lambda repository, tag: image.tags.append(f"{repository}:{tag}")
        return image

    def list(self, filters=None, name=None):
        found = super().list(filters)
        return [i for i in found if name is None or any(t.startswith(name + ":")
                                                          for t in i.tags)]


class Client:
    def __init__(self, images):
        self.images = images


def _out_with_last_goods(tmp_path, image_id: str) -> OutDir:
    out = tmp_path / "out"
    run = stored_run(out, 1)
    results = run.load()
    for cell in results.cells:
        cell.provenance = {"host_image": image_id}
    run.save(results)
    lastgood.record_run(OutDir(out), run, results, warn=pytest.fail)
    return OutDir(out)


def test_the_named_image_is_tagged_and_older_last_good_tags_go(tmp_path):
    out = _out_with_last_goods(tmp_path, NEW)
    images = TaggingImages(
        FakeImage(NEW, ["dib-matrix/host-h1:new"], labels={"org.dib-matrix.host": "h1"}),
        FakeImage(OLD, ["dib-matrix/last-good-h1:" + "a" * 12, "keep/me:1"]),
        FakeImage("sha256:" + "c" * 64, ["dib-matrix/last-good-h9:" + "c" * 12]))
    lastgoodimages.keep_host_images(Client(images), out, ["h1", "h2", "../x"])
    assert "dib-matrix/last-good-h1:" + "b" * 12 in images.images[NEW].tags
    assert images.images[OLD].tags == ["keep/me:1"]  # its last-good tag only
    assert images.images["sha256:" + "c" * 64].tags == ["dib-matrix/last-good-h9:" + "c" * 12]


def test_an_image_the_engine_lost_is_no_crash(tmp_path):
    out = _out_with_last_goods(tmp_path, NEW)
    images = TaggingImages()
    lastgoodimages.keep_host_images(Client(images), out, ["h1"])
    assert images.images == {}


def test_an_engine_that_fails_is_a_warning(tmp_path, caplog):
    out = _out_with_last_goods(tmp_path, NEW)

    class Broken:
        def get(self, reference):
            raise docker.errors.APIError("engine gone")

    lastgoodimages.keep_host_images(Client(Broken()), out, ["h1"])
    assert "not kept" in caplog.text


def test_hostgen_prunes_a_hosts_older_tags_but_not_its_last_good_ones(tmp_path):
    images = FakeImages(
        FakeImage(OLD, ["dib-matrix/host-h1:old", "dib-matrix/last-good-h1:" + "a" * 12],
                  labels={"org.dib-matrix.host": "h1"}),
        FakeImage(NEW, ["dib-matrix/host-h1:new"], labels={"org.dib-matrix.host": "h1"}))
    build._prune_stale(Client(images), "h1", keep={"dib-matrix/host-h1:new"},
                       leases=Registry(tmp_path / "leases"), say=lambda line: None)
    assert images.images[OLD].tags == ["dib-matrix/last-good-h1:" + "a" * 12]
    assert images.images[NEW].tags == ["dib-matrix/host-h1:new"]

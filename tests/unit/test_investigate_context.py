"""The context a variant runs in (``matrix.run.investigate``): the run's, with only what
the variant swaps; a kept input that cannot be used makes the variant impossible, said.

Hostile classes covered: a kept dib tree edited or removed after it was kept (never run
as if it were the last-good's), an engine that fails while a variant is prepared (the
variant is "not possible", never a crash of the run).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import docker.errors
import pytest

from matrix.run import investigate
from matrix.run.context import HostRecord, HostRecords, RunContext, RunSettings
from matrix.run.investigate import Investigator, Services, VariantUnavailable
from matrix.run.reuse import KeyMaker
from matrix.run.variants import (
    Available,
    Impossible,
    Inputs,
    LastGoodInputs,
    PlannedVariant,
    Swap,
    Variant,
)
from matrix.snapshot.store import Store
from results import treestore
from results.archive import OutDir, RunDir
from results.model import State
from tests.resultfactory import make_cell, make_run
from tests.unit.test_treestore import make_tree

IMAGE = "sha256:" + "d" * 64


class Images:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def get(self, reference):
        if self.error is not None:
            raise self.error
        return SimpleNamespace(id=reference, labels={})


def _investigator(tmp_path, client=None):
    now = make_tree(tmp_path / "now", hook="exit 1\n")
    then = make_tree(tmp_path / "then")
    out = OutDir(tmp_path / "out")
    treestore.keep(out, then.digest, then.path, then.files)
    settings = RunSettings(config=None, run_id="run", run_dir=tmp_path / "run", dib_tree=now)
    ctx = RunContext(settings, client, HostRecords({"h": HostRecord("host-image:now")}),
                     keys=KeyMaker(now), layers=object())
    run = SimpleNamespace(results=make_run([]), run_dir=RunDir(tmp_path / "run"))
    services = Services(out, Store(tmp_path / "snapshots"), contextlib.ExitStack())
    return Investigator(run, ctx, services, {}), then


def _variant(variant: Variant, swap: Swap) -> PlannedVariant:
    return PlannedVariant(variant, "h.t", "h", variant.row("t"), swap)


def test_the_tree_variant_runs_the_kept_tree_bind_mounted_and_keys_on_it(tmp_path):
    investigator, then = _investigator(tmp_path)
    ctx = investigator.context_for(_variant(Variant.DIB_TREE, Swap(tree=then.digest)))
    assert ctx.settings.dib_tree.digest == then.digest
    assert ctx.settings.dib_tree.path == treestore.stored(investigator.services.out,
                                                           then.digest)
    assert ctx.keys.tree.digest == then.digest and ctx.layers is None
    assert ctx.hosts is investigator.ctx.hosts  # the host image is the run's
    assert investigator.ctx.settings.dib_tree.digest != then.digest  # the run's unchanged


def test_the_host_image_variant_runs_the_old_image_and_nothing_else(tmp_path):
    investigator, _ = _investigator(tmp_path, client=SimpleNamespace(images=Images()))
    ctx = investigator.context_for(_variant(Variant.HOST_IMAGE, Swap(host_image=IMAGE)))
    assert ctx.hosts.get("h").image == IMAGE and ctx.layers is None
    assert ctx.settings is investigator.ctx.settings


def test_a_kept_tree_edited_since_is_never_run_as_the_last_goods(tmp_path):
    investigator, then = _investigator(tmp_path)
    kept = treestore.stored(investigator.services.out, then.digest)
    hook = kept / "elements" / "base" / "install.d" / "10-hook"
    hook.unlink()  # a hard link to the tree: replaced, not written through
    hook.write_text("exit 9\n")
    with pytest.raises(VariantUnavailable, match="changed since it was kept"):
        investigator.context_for(_variant(Variant.DIB_TREE, Swap(tree=then.digest)))


def test_a_kept_tree_removed_since_is_said(tmp_path):
    investigator, then = _investigator(tmp_path)
    treestore.collect(investigator.services.out, [])
    with pytest.raises(VariantUnavailable, match="is gone"):
        investigator.context_for(_variant(Variant.DIB_TREE, Swap(tree=then.digest)))


def test_an_engine_failing_while_a_variant_is_prepared_makes_it_not_possible(
        tmp_path, monkeypatch):
    monkeypatch.setattr(investigate, "variant_cell", lambda original, planned: original)
    client = SimpleNamespace(images=Images(docker.errors.APIError("engine gone")))
    investigator, _ = _investigator(tmp_path, client=client)
    investigator.cells = {"h.t": SimpleNamespace(target=object())}
    outcomes, impossible = {}, []
    investigator._try(_variant(Variant.HOST_IMAGE, Swap(host_image=IMAGE)), outcomes,
                      impossible)
    assert outcomes == {}
    assert impossible == [Impossible(Variant.HOST_IMAGE, "could not start: engine gone")]


NOW_INPUTS = Inputs(tree="a" * 64, host_image="sha256:" + "1" * 64, snapshot="run-now")
THEN_INPUTS = Inputs(tree="b" * 64, host_image="sha256:" + "2" * 64, snapshot="run-then")


def _sequenced(tmp_path, monkeypatch, states: dict[Variant, State]):
    """An investigation whose variants end in ``states`` (success when not named); the
    variants run, in order, and the entry."""
    investigator, _ = _investigator(tmp_path)
    ran: list[Variant] = []
    monkeypatch.setattr(investigate, "inputs_now", lambda results, cell: NOW_INPUTS)
    monkeypatch.setattr(investigate, "last_good_inputs", lambda *args: LastGoodInputs(
        "good-run", THEN_INPUTS, Available(True, True, True)))

    def run_variant(planned):
        ran.append(planned.variant)
        return make_cell(planned.host, planned.row, states.get(planned.variant, State.SUCCESS),
                         log=f"logs/h/{planned.row}.log")

    monkeypatch.setattr(investigator, "run_variant", run_variant)
    entry = investigator.investigate(make_cell("h", "t", State.FAILED))
    return ran, entry


def test_a_swap_that_passes_names_its_input_and_all_is_not_needed(tmp_path, monkeypatch):
    ran, entry = _sequenced(tmp_path, monkeypatch, {Variant.RERUN: State.FAILED,
                                                    Variant.DIB_TREE: State.FAILED,
                                                    Variant.SNAPSHOT: State.FAILED})
    assert ran == [Variant.RERUN, Variant.DIB_TREE, Variant.HOST_IMAGE, Variant.SNAPSHOT]
    assert entry["verdict"] == "host image"
    assert "variant host-image passed" in entry["evidence"]
    assert "logs/h/t--inv-host-image.log" in entry["evidence"]


def test_only_all_together_passing_is_a_combination(tmp_path, monkeypatch):
    failed = {v: State.FAILED for v in Variant if v is not Variant.ALL}
    ran, entry = _sequenced(tmp_path, monkeypatch, failed)
    assert ran[-1] is Variant.ALL and entry["verdict"] == "combination"


def test_nothing_passing_is_unexplained(tmp_path, monkeypatch):
    ran, entry = _sequenced(tmp_path, monkeypatch, {v: State.FAILED for v in Variant})
    assert len(ran) == 5 and entry["verdict"] == "unexplained"
    assert entry["evidence"] == "no variant passed"


def test_a_rerun_that_passes_stops_the_investigation_flaky(tmp_path, monkeypatch):
    ran, entry = _sequenced(tmp_path, monkeypatch, {})
    assert ran == [Variant.RERUN] and entry["verdict"] == "flaky"


def test_a_rerun_with_an_engine_error_is_no_verdict_and_nothing_else_runs(tmp_path,
                                                                          monkeypatch):
    ran, entry = _sequenced(tmp_path, monkeypatch, {Variant.RERUN: State.ERROR})
    assert ran == [Variant.RERUN] and entry["verdict"] == "unexplained"
    notes = {i["variant"]: i["why"] for i in entry["impossible"]}
    assert set(notes) == {"dib-tree", "host-image", "snapshot"}
    assert all("the rerun gave no verdict" in why for why in notes.values())

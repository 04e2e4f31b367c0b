"""Image checks in results.json (schema), the HTML cell panel, and the layout record dib
writes beside a disk image (dib.blockdevice.disk) as matrix.verdict.verify reads it."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import jsonschema

from dib.blockdevice.disk import (
    DiskImage,
    layout_path,
    layout_record,
    publish_layout,
    record_layout,
)
from dib.blockdevice.geometry import place
from dib.blockdevice.layout import MIB, parse_layout_text
from dib.blockdevice.plan import make_plan, plan_dir
from matrix.verdict.verify.expect import load_layout_record
from reports.html import render_html
from reports.jsonreport import load_schema
from results.model import Artifact, Category, ImageCheck, State
from results.reader import read_results
from results.store import save
from tests.resultfactory import make_cell, make_run

LAYOUTS = Path(__file__).resolve().parents[2] / "elements" / "vm" / "layouts"
HOSTILE = '<script>alert("x")</script>'


def checked_run():
    checks = [
        ImageCheck("os-release", True, "debian bookworm", "images/h/t.tar"),
        ImageCheck("packages", False, f"packages: 1 in the image is not in the manifest "
                                      f"({HOSTILE})", "images/h/t.tar"),
    ]
    return make_run([
        make_cell("h", "t", State.FAILED, checks=checks,
                  category=Category("image-verification-failed", checks[1].detail),
                  artifacts=[Artifact("images/h/t.tar", "tar", 10, "0" * 64)]),
        make_cell("h", "u", State.SUCCESS, checks=checks[:1]),
    ])


def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema())


def test_checks_are_in_the_schema_and_results_json_round_trips(tmp_path):
    run = checked_run()
    save(run, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert [e.message for e in validator().iter_errors(data)] == []
    assert data["cells"][0]["checks"][1]["ok"] is False
    assert read_results(tmp_path) == run
    data["cells"][0]["checks"][0]["surprise"] = 1
    assert list(validator().iter_errors(data))


def test_the_check_definition_documents_every_field():
    node = load_schema()["$defs"]["check"]
    documented = set(node["properties"])
    have = {f.name for f in fields(ImageCheck)}
    assert have <= documented and documented - have <= {"seconds"}
    assert all(len(p["description"]) >= 10 for p in node["properties"].values())
    assert "checks" in load_schema()["$defs"]["cell"]["properties"]


def test_the_cell_panel_lists_the_checks_escaped():
    html = render_html(checked_run())
    panel = html.split('id="cell-h.t"')[1].split("</details>")[0]
    assert "<h4>Image checks</h4>" in panel
    assert '<tr class="check-ok"><td class="mono">images/h/t.tar</td><td>os-release</td>' \
           '<td class="result">ok</td><td>debian bookworm</td></tr>' in panel
    assert '<td class="result">failed</td>' in panel
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in panel
    other = html.split('id="cell-h.u"')[1].split("</details>")[0]
    assert "failed" not in other.split("<h4>Image checks</h4>")[1]


def test_a_cell_without_checks_has_no_checks_table():
    html = render_html(make_run([make_cell("h", "t", State.SUCCESS)]))
    assert "Image checks" not in html


def efi_disk():
    layout = parse_layout_text((LAYOUTS / "efi.yaml").read_text(), "efi (efi.yaml)")
    plan = make_plan(layout, "", "efi (efi.yaml)")
    return plan, DiskImage(Path("x.raw"), 200 * MIB, place(layout, 200 * MIB),
                           ("i386-pc", "x86_64-efi"))


def test_dib_records_what_it_wrote_and_verify_reads_it(tmp_path):
    plan, disk = efi_disk()
    data = layout_record(plan, disk)
    assert (data["format"], data["table"], data["size"], data["boot"]) == (
        1, "gpt", 200 * MIB, ["i386-pc", "x86_64-efi"])
    esp, bsp, root = data["partitions"]
    assert (esp["name"], esp["start"], esp["size"], esp["filesystem"], esp["label"],
            esp["mountpoint"]) == ("ESP", MIB, 64 * MIB, "vfat", "ESP", "/boot/efi")
    assert (bsp["filesystem"], bsp["label"], bsp["uuid"]) == (None, None, None)
    assert (root["label"], root["mountpoint"], root["number"]) == ("cloudimg-rootfs", "/", 3)
    assert root["uuid"] == plan.identities["root"].uuid
    path = tmp_path / "t.layout.json"
    path.write_text(json.dumps(data))
    read = load_layout_record(path)
    assert read.table == "gpt" and read.root is not None
    assert (read.root.start, read.root.size) == (root["start"], root["size"])


def test_the_record_goes_to_the_plan_dir_and_beside_an_output_raw(tmp_path):
    plan, disk = efi_disk()
    build = tmp_path / "build"
    plan_dir(build).mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    inside = record_layout(plan, DiskImage(build / "image.raw", disk.size, disk.extents, ()),
                           build)
    assert inside == [plan_dir(build) / "layout.json"]
    assert not list(out.iterdir())
    beside = record_layout(plan, DiskImage(out / "t.raw", disk.size, disk.extents, ()), build)
    assert beside[1] == out / "t.layout.json" == layout_path(out / "t.raw")
    assert publish_layout(build, out / "u") == out / "u.layout.json"
    assert json.loads((out / "u.layout.json").read_text())["table"] == "gpt"
    assert publish_layout(tmp_path / "no-plan", out / "v") is None

import pytest

from matrix.classify import classify, load_catalogue
from matrix.diagnostics import ConfigError

RULES = load_catalogue()

# One real-looking log line per bundled category, and the legend it must produce.
SAMPLES = {
    "no-such-script": (
        "12:00 | root.d/08-debootstrap | No such script: /usr/share/debootstrap/scripts/forky",
        "No such script: /usr/share/debootstrap/scripts/forky",
    ),
    "zypper-not-available": (
        "root.d/08-zypper-minimal | zypper not available",
        "zypper not available",
    ),
    "dnf-not-available": ("dnf not available", "dnf not available"),
    "runuser-not-available": ("preflight: runuser not available", "runuser not available"),
    "tox-not-available": ("tox not available", "tox not available"),
    "missing-host-tool": ("bash: qemu-img: command not found", "missing host tool: qemu-img"),
    "missing-dependency": ("prerequisite failed: h.hostgen", "missing dependency"),
    "base-image-unavailable": ("base image unavailable: cannot pull x", "base image unavailable"),
    "suite-not-on-mirror": (
        "mirror http://m/debian does not carry suite 'noble' (x)",
        "mirror does not carry suite 'noble'",
    ),
    "mirror-unreachable": (
        "mirror http://127.0.0.1:9/debian unreachable: refused",
        "mirror/network unreachable",
    ),
    "release-file-expired": (
        "E: Release file for http://m/debian/dists/sid/InRelease is expired (invalid since 1d).",
        None,
    ),
    "package-not-found": ("E: Unable to locate package nosuchpkg", "package not found: nosuchpkg"),
    "out-of-disk-space": ("tar: ./x: Cannot write: No space left on device", "out of disk space"),
    "element-error": ("ERROR: element 'foo' not found (needed by vm <- img)", None),
    "capability-denied": ("mount: /x/proc: permission denied.", None),
    "timeout": ("cell timed out after 20 s", "timeout"),
    "engine-error": ("engine error: 500 Server Error", "container engine error"),
    "no-bootloader": ("No bootable device.", "boot: no bootloader"),
    "kernel-panic": ("Kernel panic - not syncing: VFS", "boot: kernel panic"),
    "root-fs-not-found": ("ALERT!  LABEL=cloudimg-rootfs does not exist.", None),
    "boot-timeout": ("boot timed out after 600 s", None),
}


@pytest.mark.parametrize("category", sorted(SAMPLES))
def test_each_category_has_a_matching_sample(category):
    line, legend = SAMPLES[category]
    verdict = classify(["noise", line, "more noise"], "h", "t", RULES)
    assert verdict.category.id == category
    assert verdict.evidence == line.strip()
    if legend:
        assert verdict.category.legend == legend


def test_every_bundled_category_is_sampled():
    assert {r.id for r in RULES} == set(SAMPLES)


def test_multi_label_keeps_every_match_and_priority_picks_the_legend():
    verdict = classify(["zypper not available", "E: Unable to locate package x"], "h", "t", RULES)
    assert verdict.category.id == "zypper-not-available"
    assert set(verdict.category.labels) >= {
        "zypper-not-available",
        "missing-host-tool",
        "package-not-found",
    }


def test_last_matching_line_is_the_evidence():
    verdict = classify(["No such script: /a/noble", "No such script: /a/forky"], "h", "t", RULES)
    assert verdict.category.legend == "No such script: /a/forky"


def test_uncategorized_keeps_the_tail():
    lines = [f"line {n}" for n in range(40)]
    verdict = classify(lines, "h", "t", RULES)
    assert verdict.category.id == "uncategorized"
    assert verdict.evidence.splitlines() == lines[-15:]


def test_user_catalogue_adds_scoped_rules_and_replaces_by_id(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("""\
- id: flaky-proxy
  legend: "proxy said {code}"
  priority: 99
  patterns: ['proxy error (?P<code>\\d+)']
  hosts: ['debian-*']
- id: timeout
  legend: took too long
  patterns: ['^cell timed out']
""")
    rules = load_catalogue([extra])
    hit = classify(["proxy error 502"], "debian-sid", "t", rules)
    assert hit.category.legend == "proxy said 502"
    miss = classify(["proxy error 502"], "fedora-43", "t", rules)
    assert miss.category.id == "uncategorized"
    assert (
        classify(["cell timed out after 1 s"], "h", "t", rules).category.legend == "took too long"
    )


def test_bad_catalogue_names_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: Bad Id\n  patterns: ['x']\n- id: ok\n  patterns: ['(']\n")
    with pytest.raises(ConfigError) as err:
        load_catalogue([bad])
    text = str(err.value)
    assert "bad.yaml:1: [0].id: required" in text
    assert "bad.yaml:4: [1].patterns[0]: bad regex" in text

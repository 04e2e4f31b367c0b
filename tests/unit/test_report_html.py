"""The HTML report: escaping of untrusted text, self-containment, content, comparison, trends."""

from __future__ import annotations

import copy
from html.parser import HTMLParser

from reports.history import TrendPoint
from reports.html import render_html
from reports.htmlview import anchor, human_duration, human_size, run_duration, safe_href
from reports.styles import STYLES
from results.model import Artifact, Category, State
from tests.resultfactory import ALL_STATES, category, make_cell, make_run


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data

    def named(self, tag):
        return [attrs for name, attrs in self.tags if name == tag]


def parse(html: str) -> Elements:
    parser = Elements()
    parser.feed(html)
    return parser


HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


def hostile_run():
    return make_run([
        make_cell("h<b>1</b>", "t", State.FAILED, category=category("uncategorized"),
                  evidence=f"line one\n{HOSTILE}\nlast line", reproducer=f"echo '{HOSTILE}'"),
        make_cell("h2", "t", State.FAILED, evidence=HOSTILE, reason=HOSTILE,
                  category=Category("evil", f"legend {HOSTILE}", link="javascript:alert(1)")),
        make_cell("h3", "t", State.SUCCESS, artifacts=[Artifact(
            f"images/{HOSTILE}.qcow2", "qcow2", 10, "0" * 64)]),
    ])


def test_script_in_evidence_shows_as_text():
    html = render_html(hostile_run())
    elements = parse(html)
    assert len(elements.scripts) == 1  # only the report's own few lines
    assert "pwned" not in elements.scripts[0]
    assert not elements.named("img")
    assert "<b>1</b>" not in html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_script_in_a_log_file_shows_as_text(tmp_path, all_states, all_states_dir):
    run_dir = all_states_dir
    html = render_html(all_states, run_dir=run_dir)
    assert len(parse(html).scripts) == 1
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    assert '<script>alert("pwned")' not in html


def test_javascript_links_are_dropped():
    html = render_html(hostile_run())
    hrefs = [a.get("href") or "" for a in parse(html).named("a")]
    assert not [h for h in hrefs if h.lower().startswith("javascript")]


def test_self_contained_no_fetches(all_states):
    html = render_html(all_states, run_dir=ALL_STATES)
    elements = parse(html)
    assert not elements.named("link")
    assert not elements.named("img")
    assert not elements.named("iframe")
    assert all("src" not in attrs for _, attrs in elements.tags)
    assert "@import" not in html and "url(" not in html
    # Links a reader may click (category docs) are fine; nothing else refers outside.
    assert all(tag == "a" for tag, attrs in elements.tags if "href" in attrs)


def test_one_colour_per_state_from_the_styles_table(all_states):
    html = render_html(all_states)
    backgrounds = [s.background for s in STYLES.values()]
    assert len(set(backgrounds)) == len(backgrounds)
    for s in STYLES.values():
        rule = f".{s.css_class} {{ background-color: {s.background}; color: {s.foreground}; }}"
        assert rule in html
    assert set(STYLES) == set(State)


def test_grid_cells_legend_and_details(all_states):
    results = all_states
    html = render_html(results, run_dir=ALL_STATES)
    elements = parse(html)
    cells = [a for a in elements.named("td") if "cell" in (a.get("class") or "").split()]
    assert len(cells) == len(results.cells)
    details = elements.named("details")
    assert sorted(d["id"] for d in details) == sorted(anchor(c.id) for c in results.cells)
    links = [a.get("href") or "" for a in elements.named("a")]
    assert {h[1:] for h in links if h.startswith("#cell-")} == {anchor(c.id) for c in results.cells}
    assert "- 2 -</span>No such script: /usr/share/debootstrap/scripts/forky" in html
    assert 'class="cell st-success flag-retry"' in html
    assert 'class="cell st-success flag-reused"' in html
    assert "success (try 2)" in html


def test_details_have_evidence_duration_reproducer_log_and_images(all_states):
    html = render_html(all_states, run_dir=ALL_STATES)
    forky = html.split('id="cell-debian-bookworm.debian-forky"')[1].split("</details>")[0]
    assert '<mark class="evidence"><span class="ln">3</span>E: No such script:' in forky
    assert "3m 04s" in forky
    assert "python3 -m dib -o /out/debian-forky -t tar debian-forky</code>" in forky
    assert 'href="logs/debian-bookworm/debian-forky.log"' in forky
    built = html.split('id="cell-debian-bookworm.debian-bookworm"')[1].split("</details>")[0]
    assert 'href="images/debian-bookworm/debian-bookworm.qcow2"' in built
    assert "295.7 MiB (310,031,000 bytes)" in built
    assert "22ef916abcb06333664122d44e2bb108dad6237ed9e0444518c3d99400c531d1" in built
    boot = html.split('id="cell-debian-trixie.ubuntu-noble_boot"')[1].split("</details>")[0]
    assert 'href="logs/debian-trixie/ubuntu-noble%3Aboot.log"' in boot


def test_uncategorized_section_rate_and_metadata(all_states):
    html = render_html(all_states, run_dir=ALL_STATES)
    section = html.split('id="uncategorized"')[1].split("</section>")[0]
    assert "Uncategorized failures (2)" in section
    assert "debian-trixie.tox" in section and "ubuntu-noble.opensuse-leap-15" in section
    assert "py311: exit 1 (3.40 seconds)" in section  # the log's tail
    assert "\x1b" not in html and "1 failed, 41 passed" in section
    assert "classification rate: 83% (10 of 12 failures have a named cause)" in html
    meta = html.split('id="run"')[1]
    for text in ("matrix/config/matrices/default.yaml", "61273ec0d2f4e8b1a9c3d5e7f9a1b3c5d7e9f1a3",
                 "/work/main", "kind=docker", "2025-06-01T02:00:00+00:00",
                 "2025-06-01T03:12:45+00:00", "1h 12m 45s", "dib-matrix/host-fedora-43:"):
        assert text in meta, text


def test_log_outside_the_run_is_not_read(tmp_path):
    secret = tmp_path / "secret.log"
    secret.write_text("TOP SECRET\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cell = make_cell("h", "t", State.FAILED, log="../secret.log", evidence="boom")
    html = render_html(make_run([cell]), run_dir=run_dir)
    assert "TOP SECRET" not in html
    assert 'href="../secret.log"' not in html


def test_baseline_comparison_marks_regressions(all_states):
    new = all_states
    old = copy.deepcopy(all_states)
    old.run_id = "older"
    tox = old.cell("debian-trixie", "tox")
    tox.state, tox.category, tox.evidence = State.SUCCESS, None, None
    html = render_html(new, baseline=old)
    section = html.split('id="comparison"')[1].split("</section>")[0]
    assert "Compared with older" in section
    assert "1 regressions (1 voting)" in section
    assert 'href="#cell-debian-trixie.tox"' in section
    assert 'class="cell st-failed regressed"' in html
    assert 'id="comparison"' not in render_html(new)


def test_trends_are_shown(all_states):
    results = all_states
    trends = {"debian-bookworm.tox": [TrendPoint("r1", State.FAILED), TrendPoint("r2", None),
                                      TrendPoint(results.run_id, State.SUCCESS)]}
    html = render_html(results, trends=trends)
    assert 'title="r1: failed"' in html and 'title="r2: not in this run"' in html
    assert html.count('class="trend big"') == 1


def test_interrupted_banner_and_pending():
    results = make_run([make_cell("h", "a"), make_cell("h", "b", State.PENDING)])
    results.interrupted = True
    html = render_html(results)
    assert 'id="interrupted"' in html and "st-pending" in html


def test_helpers():
    assert safe_href("logs/h/a:boot.log") == "logs/h/a%3Aboot.log"
    # results.json is untrusted: a report links only into its run directory, never out.
    for bad in ("javascript:alert(1)", "/etc/passwd", "../x", "//evil.example/x", "file:///x",
                "https://example.org/x", "logs\\..\\x", "logs//x", "logs/\x1b[2J.log"):
        assert safe_href(bad) is None, bad
    assert human_size(512) == "512 B" and human_size(3 * 1024**3) == "3.0 GiB"
    assert human_duration(None) == "-" and human_duration(42) == "42.0 s"
    assert human_duration(3725) == "1h 02m 05s"
    run = make_run([])
    run.started, run.finished = "2025-06-01T02:00:00Z", "2025-06-01T02:01:30Z"
    assert run_duration(run) == 90.0
    run.finished = None
    assert run_duration(run) is None


def test_a_builds_tree_cache_outcome_shows_escaped_in_its_panel():
    hit = make_cell("h", "t", State.SUCCESS)
    hit.provenance = {"tree_cache": "hit 88543a044b5a463b (root.d ... from the cache)"}
    forged = make_cell("h2", "t", State.SUCCESS)
    forged.provenance = {"tree_cache": HOSTILE}
    odd = make_cell("h3", "t", State.SUCCESS)
    odd.provenance = {"tree_cache": ["not", "text"]}
    html = render_html(make_run([hit, forged, odd]))
    assert html.count('<tr class="tree-cache">') == 2
    assert "hit 88543a044b5a463b (root.d ... from the cache)" in html
    assert HOSTILE not in html and "&lt;script&gt;" in html

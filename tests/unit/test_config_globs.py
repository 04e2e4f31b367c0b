"""The glob selector answers exactly as fnmatch.fnmatchcase does, however it narrows.

A seeded fuzzer over globs built from the characters that mean something to fnmatch
(``*?[]!-^\\``) and names built from a few letters and those characters too: every
answer of :class:`NameIndex` and :func:`first_matches` equals the one-by-one fnmatch
answer.
"""

from __future__ import annotations

import fnmatch
import random

from matrix.config.globs import NameIndex, first_matches, glob_problem, match_globs
from tests.hostile import fuzz_rounds

GLOB_CHARS = "ab-.:*?[]!^\\"
NAME_CHARS = "ab-.:]![*"


def _word(rng: random.Random, chars: str, longest: int) -> str:
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, longest)))


def test_name_index_matches_as_fnmatch_does():
    rng = random.Random("dib-matrix-globs")
    for _ in range(fuzz_rounds(60) * 20):
        names = {_word(rng, NAME_CHARS, 6) for _ in range(30)}
        index = NameIndex(names)
        pattern = _word(rng, GLOB_CHARS, 6)
        expected = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        assert index.matching(pattern) == expected, (pattern, sorted(names))
        assert set(match_globs(sorted(names), pattern)) == expected


def test_first_matches_is_the_first_rule_in_order():
    rng = random.Random("dib-matrix-rules")
    for _ in range(fuzz_rounds(60) * 5):
        hosts = sorted({_word(rng, NAME_CHARS, 4) for _ in range(6)})
        rows = sorted({_word(rng, NAME_CHARS, 5) for _ in range(20)})
        rules = [(_word(rng, GLOB_CHARS, 4), _word(rng, GLOB_CHARS, 5))
                 for _ in range(rng.randint(0, 6))]
        found = first_matches(rules, hosts, rows)
        for host in hosts:
            for row in rows:
                expected = next((i for i, (h, r) in enumerate(rules)
                                 if fnmatch.fnmatchcase(host, h)
                                 and fnmatch.fnmatchcase(row, r)), None)
                assert found.get((host, row)) == expected, (rules, host, row)


def test_what_cannot_be_a_glob():
    for bad in ["", None, 5, ["a"], "a b", "a\n", "a\x1bb", "x" * 300]:
        assert glob_problem(bad) is not None, bad
    for good in ["*", "debian-*", "[!a]?", "x:boot"]:
        assert glob_problem(good) is None, good

"""Bounds on counts read from the command line or from run directories of other machines.

A run directory (a shard part from a CI artifact) is untrusted: a count in it sizes
loops and listings, so every such count has a ceiling here, beside the name rules
(``results.names``), where both the configuration side (``plan --shards N``,
``run --shard I/N``) and the reading side (``merge``) import it.
"""

from __future__ import annotations

# Shards of one matrix. A shard is at least one host's column and a matrix of a
# thousand host distros is beyond any we know, while a count in the millions would
# make merge list a million missing shards: 1000 is far above use, far below harm.
MAX_SHARDS = 1000
# Parts given to one merge: one per shard, so the same ceiling.
MAX_PARTS = MAX_SHARDS

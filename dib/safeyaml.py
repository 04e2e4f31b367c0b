"""``yaml.safe_load`` with a bound on the shape of the document.

YAML read from files we do not control (an element's ``package-installs.yaml``, a
block-device layout, the orchestrator's configuration) can be small on disk and
still hurt: ``[[[[...`` 100,000 levels deep makes PyYAML's recursive composer raise
RecursionError, and aliases nested in aliases ("billion laughs") make a few lines
expand to a billion values for whoever walks or prints the result; an alias inside
its own anchor makes the data refer to itself.

:class:`BoundedLoader` counts while it composes, before anything is built: every
node's depth and its size with aliases expanded. A document beyond ``MAX_DEPTH``
levels or ``MAX_NODES`` values, or with an alias to a node that contains it, raises
:class:`TooComplex`, a ``yaml.MarkedYAMLError`` (so handlers that already catch
YAML errors report it with its line). Every walk over what it returns is bounded.

Standard library and PyYAML only: dib runs on its hosts' own Python (3.9 and newer).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import yaml
from yaml.composer import ComposerError

MAX_DEPTH = 50  # dib's and the matrix's files nest a handful of levels
MAX_NODES = 100_000  # values of the document with every alias expanded


class TooComplex(ComposerError):
    """The document nests too deep, expands too large, or an alias contains itself."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents beyond ``max_depth`` levels or ``max_nodes``
    values (aliases expanded) while composing them."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._open = 0  # nodes being composed around the current one
        # id of every composed node -> (values, levels) with aliases expanded; a node
        # still being composed has no entry, which is how a self-reference shows.
        self._shape: Dict[int, Tuple[int, int]] = {}

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._shape:
                raise TooComplex(None, None, "an alias refers to a node that contains it",
                                 mark)
            return node
        mark = self.peek_event().start_mark
        if self._open >= self.max_depth:
            raise TooComplex(None, None, f"nested deeper than {self.max_depth} levels", mark)
        self._open += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._open -= 1
        self._shape[id(node)] = self._measure(node, mark)
        return node

    def _measure(self, node: yaml.Node, mark: Any) -> Tuple[int, int]:
        if isinstance(node, yaml.ScalarNode):
            return 1, 1
        if isinstance(node, yaml.MappingNode):
            children: List[yaml.Node] = [part for pair in node.value for part in pair]
        else:
            children = list(node.value)
        shapes = [self._shape[id(child)] for child in children]
        values = 1 + sum(size for size, _ in shapes)
        levels = 1 + max((depth for _, depth in shapes), default=0)
        if values > self.max_nodes:
            raise TooComplex(None, None, f"expands to more than {self.max_nodes} values "
                             "(nested aliases?)", mark)
        if levels > self.max_depth:
            raise TooComplex(None, None, f"nested deeper than {self.max_depth} levels "
                             "through aliases", mark)
        return values, levels


    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        """A date-shaped scalar that is no day (``2025-13-01``, ``0000-01-01``) is a YAML
        error at its line, where PyYAML raises a bare ValueError."""
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError) as err:
            raise yaml.constructor.ConstructorError(
                None, None, f"{str(node.value)[:40]!r} is not a valid date or time ({err})",
                node.start_mark) from None


# PyYAML dispatches on the function it registered, not on the method: register ours.
BoundedLoader.add_constructor("tag:yaml.org,2002:timestamp",
                              BoundedLoader.construct_yaml_timestamp)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)`` within the bounds of :class:`BoundedLoader`."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()

"""Reading untrusted YAML: a SafeLoader that cannot be made to exhaust the machine, refuses
duplicate keys, and reads floats as YAML 1.2 does; plus the one helper every error message
uses to quote a value it was given (cut to about 200 characters).

* **Alias bombs**: YAML aliases (``*a``) share one node, so a 300-byte file can describe a
  list of 10^9 items; building or printing it is what exhausts memory. The loader counts
  the values the document would have once every alias is expanded and refuses more than
  :data:`MAX_EXPANDED_NODES` (a large spec has a few thousand).
* **Duplicate keys**: PyYAML keeps the last of two equal keys silently; here it is an error
  naming both lines (keys merged in with ``<<`` may still be overridden).
* **YAML 1.1 words**: ``no``, ``yes``, ``on``, ``off`` are booleans and ``1e3`` a number in
  YAML; :func:`yaml_word_hint` is the sentence that tells a user to quote them.

Example:
    >>> load_yaml("a: 1\\nb: [x, 1e-3]")
    {'a': 1, 'b': ['x', 0.001]}
    >>> quote("x" * 500)[-30:]
    "xxxxxxxxx... (500 characters)'"
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["MAX_EXPANDED_NODES", "QUOTE_LIMIT", "SpecLoader", "YamlLimitError", "cut", "load_yaml", "quote",
           "yaml_word_hint"]

#: The most values (scalars, lists, mappings) a spec may expand to, aliases expanded.
MAX_EXPANDED_NODES = 100_000
#: The most characters of a value quoted in an error message.
QUOTE_LIMIT = 200


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text``, cut to ``limit`` characters with a note of its full length.

    Example:
        >>> cut("abcdef", 3)
        'abc... (6 characters)'
    """
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters.

    The repr of a huge value is never built in full: a long string is cut before ``repr``,
    and a container's repr is built by :mod:`reprlib` with bounded depth and width.
    """
    if isinstance(value, str):
        return repr(cut(value, limit)) if len(value) > limit else repr(value)
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        import reprlib

        r = reprlib.Repr()
        r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 4, 20, 20, 20, 20
        r.maxstring, r.maxother, r.maxlong = limit, limit, limit
        return cut(r.repr(value), limit)
    return cut(repr(value), limit)


def yaml_word_hint(values: Any) -> str:
    """A sentence telling the user to quote YAML 1.1 words, when ``values`` (a value, a list,
    or a mapping's keys and values) holds a boolean or a number where text was expected;
    else an empty string."""
    items: list[Any]
    if isinstance(values, dict):
        items = [*values.keys(), *values.values()]
    elif isinstance(values, (list, tuple, set)):
        items = list(values)
    else:
        items = [values]
    odd = [v for v in items if isinstance(v, (bool, int, float))]
    if not odd:
        return ""
    return (f" YAML reads unquoted words such as no, yes, on, off, true as booleans and 1e3, 007 as numbers "
            f"(here: {quote(odd[:5])}); quote each such value, e.g. 'no' or \"1e3\".")


class YamlLimitError(yaml.YAMLError):
    """The document expands to more values than :data:`MAX_EXPANDED_NODES` (an alias bomb)."""

    def __init__(self, problem: str, problem_mark: Any = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = problem_mark


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with a bound on the expanded document, no duplicate keys, and YAML 1.2
    floats (PyYAML reads ``1e-3`` as a string, which would turn ``eps: 1e-3`` into a type
    error)."""

    max_expanded_nodes = MAX_EXPANDED_NODES

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node, self.max_expanded_nodes)
        return node

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            _check_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _check_expanded_size(root: Node, limit: int) -> None:
    """Refuse a node graph whose tree (aliases expanded) has more than ``limit`` nodes.

    Sizes are memoised per node, so a bomb is measured in time linear in its *file*, not in
    its expansion; a cycle (a recursive alias) counts as over the limit.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            total = 1 + sum(sizes[id(c)] for c in children)
            sizes[key] = total
            if total > limit:
                raise YamlLimitError(
                    f"the document expands to more than {limit} values once its aliases (*name) are "
                    f"expanded; a spec this large is refused (an alias bomb?)", node.start_mark)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YamlLimitError("the document refers to itself through an alias (a recursive structure)",
                                 node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_duplicate_keys(node: MappingNode) -> None:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            first = seen[key]
            raise ConstructorError(
                None, None,
                f"duplicate key {quote(key_node.value)} (first at line {first.line + 1}); a key may appear "
                f"once in a mapping", key_node.start_mark)
        seen[key] = key_node.start_mark


def load_yaml(text: str) -> Any:
    """Parse ``text`` with :class:`SpecLoader`; raises ``yaml.YAMLError`` subclasses."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader subclass

"""The reference tables of docs/configuration.md, generated from the schema (each key written once).

docs/configuration.md keeps its prose; each table sits between two marker
comments::

    <!-- generated table: web (python -m portwatch.config.docs) -->
    | key | type | default | meaning |
    ...
    <!-- end of generated table -->

:func:`regenerate` replaces every marked table with the text
:func:`render` makes from the schema's :class:`~portwatch.config.schema.Key`
texts and the dataclass defaults; a test fails when the committed file
differs. Run ``python -m portwatch.config.docs`` to rewrite the file
(``--check`` only tells whether it is up to date).

May import: the standard library and :mod:`portwatch.config` (it reads the
assembled schema of :mod:`.loading`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from portwatch.config.loading import CONFIG
from portwatch.config.schema import Key, ListOf, MapOf, Section, Tagged

__all__ = ["DOCS", "REGENERATE", "TABLES", "regenerate", "render"]

#: The file this module writes (the repository's, next to the package).
DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
#: The command that rewrites the tables, as error messages quote it.
REGENERATE = "python -m portwatch.config.docs"

_MARKER = re.compile(
    r"(<!-- generated table: (?P<name>[\w.-]+) \(" + re.escape(REGENERATE) + r"\) -->\n)"
    r"(?P<body>.*?)"
    r"(<!-- end of generated table -->)",
    re.DOTALL,
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _section_at(path: str) -> Section:
    """The section at a key path of the whole shape (``web``, ``services[]``, ``alerts.rules[]``)."""
    node: object = CONFIG
    for part in [p for p in path.split(".") if p]:
        name, is_list = part.removesuffix("[]"), part.endswith("[]")
        assert isinstance(node, Section)
        node = next(k.node for k in node.fields if k.name == name)
        if is_list:
            assert isinstance(node, ListOf)
            node = node.item
    assert isinstance(node, Section)
    return node


def _key_table(path: str, last: str = "meaning") -> str:
    """The table of the section at ``path``: key, type, default, meaning (``last`` heads the last column)."""
    section = _section_at(path)
    prefix = f"{path}." if path else ""
    lines = [_row(["key", "type", "default", last]), "|---|---|---|---|"]
    for key in section.fields:
        lines.append(_row([f"`{prefix}{key.name}`", key.type, section.default_text(key), key.doc]))
    return "\n".join(lines)


def _or_list(words: Sequence[str]) -> str:
    quoted = [f"`{w}`" for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _sinks_table() -> str:
    """``alerts.sinks.NAME.*``: one row per key of any sink type, with the types that have it."""
    sinks = next(k.node for k in _section_at("alerts").fields if k.name == "sinks")
    assert isinstance(sinks, MapOf) and isinstance(sinks.value, Tagged)
    sections = sinks.value.sections
    found: dict[str, tuple[Key, Section, list[str]]] = {}
    for sink_type, section in sections.items():
        for key in section.fields:
            if key.name not in found:
                found[key.name] = (key, section, [])
            found[key.name][2].append(sink_type)
    everywhere = [n for n, (_, _, types) in found.items() if len(types) == len(sections)]
    order = ["type"] + [n for n in found if n not in everywhere] + [n for n in everywhere if n != "type"]
    lines = [_row(["key", "sink types", "type", "default", "meaning"]), "|---|---|---|---|---|"]
    for name in order:
        key, section, types = found[name]
        shown_types = "all" if len(types) == len(sections) else ", ".join(types)
        type_text = _or_list(list(sections)) if name == "type" else key.type
        lines.append(_row([f"`alerts.sinks.NAME.{name}`", shown_types, type_text, section.default_text(key),
                           key.doc]))
    return "\n".join(lines)


#: Every generated table, by the name its markers give.
TABLES: Mapping[str, Callable[[], str]] = {
    "top-level": lambda: _key_table(""),
    "services": lambda: _key_table("services[]"),
    "ignore": lambda: _key_table("ignore[]", last="matches a finding when"),
    "thresholds": lambda: _key_table("thresholds"),
    "web": lambda: _key_table("web"),
    "metrics": lambda: _key_table("metrics"),
    "namespaces": lambda: _key_table("namespaces"),
    "alerts": lambda: _key_table("alerts"),
    "alerts.sinks": _sinks_table,
    "alerts.rules": lambda: _key_table("alerts.rules[]"),
}


def render(name: str) -> str:
    """The markdown of table ``name`` (one of :data:`TABLES`), ending in a newline. Raises KeyError."""
    return TABLES[name]() + "\n"


def regenerate(text: str) -> str:
    """``text`` (docs/configuration.md) with every marked table replaced by :func:`render`'s.

    Raises ``ValueError`` naming a marker whose table is unknown, or a
    table of :data:`TABLES` that has no markers.
    """
    seen: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in TABLES:
            raise ValueError(f"unknown generated table {name!r}; known: {', '.join(TABLES)}")
        seen.append(name)
        return match.group(1) + render(name) + match.group(4)

    out = _MARKER.sub(replace, text)
    missing = [name for name in TABLES if name not in seen]
    if missing:
        raise ValueError(f"no markers for the tables {', '.join(missing)}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the tables of FILE (default: the repository's docs/configuration.md); 0, or 1 with --check."""
    parser = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=DOCS)
    parser.add_argument("--check", action="store_true", help="exit 1 if FILE is not up to date; write nothing")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    new = regenerate(text)
    if args.check:
        if new != text:
            print(f"{args.file}: out of date; run: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.file.write_text(new, encoding="utf-8")
        print(f"{args.file}: tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())

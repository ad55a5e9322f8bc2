"""The configuration reference, generated from the schema (each key written once).

Two renderings of the same tables: the reference tables of
docs/configuration.md (markdown) and the manual page portwatch.yaml(5) (roff,
:func:`manpage`, which the package build writes through scripts/gen-manpages).

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

May import: the standard library, :mod:`portwatch.config`'s schema modules and
the sink registry of :mod:`portwatch.alerts.sinks` (it assembles the same
shape :mod:`.loading` does, without :mod:`.loading`'s YAML library: the
package build renders the manual page with its build dependencies only).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

from portwatch.alerts.sinks import sink_shapes
from portwatch.config.schema import Key, ListOf, MapOf, Section, Tagged
from portwatch.config.shapes import config_shape

__all__ = ["DOCS", "MAN_SECTIONS", "REGENERATE", "SCHEMA", "TABLES", "manpage", "regenerate", "render",
           "roff_escape", "roff_inline"]

#: The whole configuration's shape: the one :data:`portwatch.config.loading.CONFIG` is.
SCHEMA: Section = config_shape(sink_shapes())

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


#: A table: its header and its rows of cells (inline markdown).
_Table = tuple[Sequence[str], Sequence[Sequence[str]]]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _markdown(table: _Table) -> str:
    header, rows = table
    return "\n".join([_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)])


def _section_at(path: str) -> Section:
    """The section at a key path of the whole shape (``web``, ``services[]``, ``alerts.rules[]``)."""
    node: object = SCHEMA
    for part in [p for p in path.split(".") if p]:
        name, is_list = part.removesuffix("[]"), part.endswith("[]")
        assert isinstance(node, Section)
        node = next(k.node for k in node.fields if k.name == name)
        if is_list:
            assert isinstance(node, ListOf)
            node = node.item
    assert isinstance(node, Section)
    return node


def _key_table(path: str, last: str = "meaning") -> _Table:
    """The table of the section at ``path``: key, type, default, meaning (``last`` heads the last column)."""
    section = _section_at(path)
    prefix = f"{path}." if path else ""
    return (["key", "type", "default", last],
            [[f"`{prefix}{key.name}`", key.type, section.default_text(key), key.doc] for key in section.fields])


def _or_list(words: Sequence[str]) -> str:
    quoted = [f"`{w}`" for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _sinks_table() -> _Table:
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
    rows = []
    for name in order:
        key, section, types = found[name]
        shown_types = "all" if len(types) == len(sections) else ", ".join(types)
        type_text = _or_list(list(sections)) if name == "type" else key.type
        rows.append([f"`alerts.sinks.NAME.{name}`", shown_types, type_text, section.default_text(key), key.doc])
    return ["key", "sink types", "type", "default", "meaning"], rows


#: Every generated table as rows, by the name its markers give.
_TABLES: Mapping[str, Callable[[], _Table]] = {
    "top-level": lambda: _key_table(""),
    "services": lambda: _key_table("services[]"),
    "ignore": lambda: _key_table("ignore[]", last="matches a finding when"),
    "thresholds": lambda: _key_table("thresholds"),
    "web": lambda: _key_table("web"),
    "metrics": lambda: _key_table("metrics"),
    "capture": lambda: _key_table("capture"),
    "namespaces": lambda: _key_table("namespaces"),
    "events": lambda: _key_table("events"),
    "alerts": lambda: _key_table("alerts"),
    "alerts.sinks": _sinks_table,
    "alerts.rules": lambda: _key_table("alerts.rules[]"),
}



def _as_markdown(table: Callable[[], _Table]) -> Callable[[], str]:
    return lambda: _markdown(table())


#: Every generated table in markdown, by the name its markers give.
TABLES: Mapping[str, Callable[[], str]] = {name: _as_markdown(table) for name, table in _TABLES.items()}


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


# ---------------------------------------------------------------------- portwatch.yaml(5)

#: The manual page's sections made from the tables: (table name, section title, what
#: its keys are, in inline markdown).
MAN_SECTIONS: Sequence[tuple[str, str, str]] = (
    ("top-level", "TOP-LEVEL KEYS", "The keys of the document's top-level mapping."),
    ("services", "SERVICES", "`services` is a list of services whose ports must stay free for them; "
                             "each item has these keys."),
    ("ignore", "IGNORE RULES", "`ignore` is a list of rules; a finding that a rule matches is dropped. "
                               "A rule matches when all its keys match."),
    ("thresholds", "THRESHOLDS", "The keys of `thresholds`."),
    ("web", "WEB", "The keys of `web`: the HTTP endpoint serving `/metrics`."),
    ("metrics", "METRICS", "The keys of `metrics`: what `/metrics` exports."),
    ("namespaces", "NAMESPACES", "The keys of `namespaces`: which network namespaces the daemon scans."),
    ("capture", "CAPTURE", "The keys of `capture`: what portwatch records besides scans (the failed "
                           "`connect()` and `bind()` calls, through Linux audit; see docs/failures.md)."),
    ("events", "EVENTS", "The keys of `events`: the daemon's socket-destroy listeners, which report "
                         "self-connects and loop pairs that live too briefly for a scan (transient findings)."),
    ("alerts", "ALERTS", "The keys of `alerts`."),
    ("alerts.sinks", "ALERT SINKS", "`alerts.sinks` maps a sink name of your choice (NAME) to a sink; "
                                    "its `type` says which kind of sink, and which keys apply."),
    ("alerts.rules", "ALERT RULES", "`alerts.rules` is a list of rules saying which findings go to "
                                    "which sinks; each item has these keys."),
)

_DESCRIPTION = (
    "portwatch reads one YAML file (the service: `/etc/portwatch/portwatch.yaml`). Every key is optional: "
    "an empty file, or no file, means the built-in defaults. Unknown keys, duplicate keys and values of the "
    "wrong type are errors, all reported at once with the path of the value (`services[2].port`); a key set "
    "to null or left empty takes its default.",
    "A duration is a number of seconds (`15`, `2.5`) or a string of integers with units, largest first: "
    "`ms`, `s`, `m`, `h`, `d`, `w`, `y` (`\"500ms\"`, `\"1m30s\"`). Addresses are IPv4 or IPv6 addresses; "
    "quote an IPv6 listen address (`\"[::1]:9731\"`).",
    "Check a file with `portwatch check-config FILE`. The daemon re-reads its file on SIGHUP "
    "(`systemctl reload portwatch`); a file that does not validate is refused as a whole and the previous "
    "configuration stays in effect.",
)


def roff_escape(text: str) -> str:
    """``text`` escaped for roff: backslashes, hyphens, and a dot or quote at a line's start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def roff_inline(text: str) -> str:
    """Inline markdown to roff: `code` and **strong** bold, [text](link) its text; the rest escaped."""
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", text)
    text = roff_escape(text)
    text = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", text)


def _man_key(header: Sequence[str], row: Sequence[str]) -> list[str]:
    """One row of a table as a roff tagged paragraph: the key, then its type, default and meaning."""
    cells = dict(zip(header, row))
    facts = [cells["type"]]
    if "sink types" in cells:
        facts.insert(0, f"sink types: {cells['sink types']}")
    facts.append("required" if cells["default"] == "required" else f"default: {cells['default']}")
    meaning = row[-1]
    return [".TP", roff_inline(cells["key"]), roff_inline("; ".join(facts)), ".br", roff_inline(meaning)]


def manpage(version: str, date: str) -> str:
    """portwatch.yaml(5) in roff, from the schema: every key of :data:`TABLES`, and the kinds of ``severities``.

    ``version`` and ``date`` (``YYYY-MM-DD``) go in the page's footer. Returns
    the page's text, ending in a newline. Never raises.
    """
    out = [f'.TH PORTWATCH.YAML 5 "{date}" "portwatch {version}" "File Formats"',
           ".SH NAME", "portwatch.yaml \\- portwatch configuration file",
           ".SH SYNOPSIS", ".B /etc/portwatch/portwatch.yaml",
           ".SH DESCRIPTION"]
    for paragraph in _DESCRIPTION:
        out += [".PP", roff_inline(paragraph)]
    for name, title, intro in MAN_SECTIONS:
        header, rows = _TABLES[name]()
        out += [f".SH {roff_escape(title)}", ".PP", roff_inline(intro)]
        for row in rows:
            out += _man_key(header, row)
        if name == "top-level":
            kinds = [k.split(".", 1)[1] for k in SCHEMA.keys("") if k.startswith("severities.")]
            out += [".PP", roff_inline("`severities` maps a finding kind to the severity (`info`, `warning` or "
                                       "`critical`) its findings get. Kinds: " + _or_list(kinds) + ".")]
    out += [".SH FILES",
            ".TP", "/etc/portwatch/portwatch.yaml", "The file the service reads.",
            ".TP", "/usr/share/doc/portwatch/examples/portwatch.yaml",
            "A complete, commented example that validates as shipped.",
            ".TP", "/usr/share/doc/portwatch/configuration.md.gz",
            "The reference with examples for every section.",
            ".SH SEE ALSO", "\\fBportwatch\\fR(8)"]
    return "\n".join(out) + "\n"


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

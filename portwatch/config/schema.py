"""The schema machinery: one node per shape validates YAML data, builds the dataclass, dumps it back.

A shape is a tree of nodes: :class:`Section` (a mapping with fixed keys that
builds a dataclass), :class:`ListOf`, :class:`MapOf`, :class:`Tagged` (a
mapping whose ``type`` picks the section) and :class:`Scalar` (a leaf with
one check function from :mod:`portwatch.config.grammar`). Each :class:`Key`
of a section is the ONE place a configuration key is written: its YAML name,
its node, its reference-table text (:mod:`portwatch.config.docs` generates
docs/configuration.md's tables from it), and the preflight check its value
needs (:mod:`portwatch.config.preflight`). Defaults are the dataclass's.

Conventions every section applies: an unknown key is an error with a
did-you-mean suggestion; a key set to ``null`` means the same as leaving it
out; bools are not numbers, floats are not integers, numbers are not strings.

May import: the standard library, :mod:`portwatch.model` and
:mod:`portwatch.config.grammar` (pure: sink modules import it for their shapes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import portwatch.config.grammar as grammar
from portwatch.config.grammar import IDENT_RE, show, suggest

__all__ = [
    "BAD", "Key", "ListCheck", "ListOf", "MapOf", "Node", "Scalar", "Section", "SectionCheck", "Tagged",
    "at", "join",
]


class _Bad:
    """Marker for a value that failed validation (its errors are already recorded)."""


BAD: Any = _Bad()


def join(path: str, key: object) -> str:
    """``path`` extended by a mapping key (``a.b``) or a list index given as ``"[3]"``."""
    if isinstance(key, str) and key.startswith("["):
        return path + key
    if not (isinstance(key, str) and IDENT_RE.fullmatch(key)):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def at(path: str, message: str) -> str:
    """One error line: ``"path: message"``, or the message alone at the top level."""
    return f"{path}: {message}" if path else message


class Node:
    """A schema node: validates one YAML value and builds the Python value for it."""

    def parse(self, value: object, path: str, errors: list[str]) -> Any:
        """The built value, or :data:`BAD` after appending ``"path: problem"`` lines to ``errors``."""
        raise NotImplementedError

    def dump(self, value: Any) -> object:
        """Plain YAML/JSON data that :meth:`parse` turns back into ``value``."""
        raise NotImplementedError

    def keys(self, path: str) -> Iterator[str]:
        """Every key path accepted below ``path`` (lists as ``name[]``)."""
        return iter(())

    def preflight(self, value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
        """``(key path, check name, value)`` for every key below ``path`` that needs a file check."""
        return iter(())


class Scalar(Node):
    """A leaf: ``check`` turns the YAML value into the Python value or raises ``ValueError``.

    The ``ValueError``'s message is the problem, without the path. ``show``
    spells a built value in the reference tables (default: as dumped).
    """

    def __init__(self, check: Callable[[object], object], dump: Callable[[Any], object] = lambda v: v,
                 show: Callable[[Any], str] | None = None) -> None:
        self._check = check
        self._dump = dump
        self._show = show

    def parse(self, value: object, path: str, errors: list[str]) -> Any:
        try:
            return self._check(value)
        except ValueError as exc:
            errors.append(at(path, str(exc)))
            return BAD

    def dump(self, value: Any) -> object:
        return self._dump(value)

    def show_value(self, value: Any) -> str:
        """``value`` as the reference tables spell a default."""
        if self._show is not None:
            return self._show(value)
        dumped = self.dump(value)
        return grammar.show(dumped).strip("'") if not isinstance(dumped, str) else dumped


#: A cross-field check of a section: takes the built object (None when some
#: key failed its own check) and the keys given (non-null, known or not);
#: yields (relative key or "", problem).
SectionCheck = Callable[[Any, frozenset[object]], Iterable[tuple[str, str]]]

#: A check over a list: takes (index, built item) for the valid items; yields
#: (relative path such as "[3]", problem).
ListCheck = Callable[[Sequence[tuple[int, Any]]], Iterable[tuple[str, str]]]


@dataclass(frozen=True)
class Key:
    """One key of a section, written once.

    ``name``: the YAML key; ``node``: what its value must be; ``attr``: the
    dataclass field it fills, when named otherwise; ``required``;
    ``type``/``doc``: the reference table's type and meaning columns;
    ``default``: the default column when the dataclass default is not what
    to say (``any``, ``see below``); ``preflight``: the name of the
    filesystem check its value needs (``readable``, ``executable``).
    """

    name: str
    node: Node
    type: str
    doc: str
    attr: str | None = None
    required: bool = False
    default: str | None = None
    preflight: str | None = None

    @property
    def field_name(self) -> str:
        """The dataclass field this key fills."""
        return self.attr or self.name


class Section(Node):
    """A mapping with a fixed set of keys, built into the dataclass ``cls`` by keyword.

    Keys left out (or null) take the dataclass default. ``checks`` report
    cross-field problems; they get the built object, or None when some key
    failed its own check (so checks on key presence alone still run).
    ``title`` and ``doc`` head the section in the reference.
    """

    def __init__(self, cls: type[Any], keys: Sequence[Key], checks: Sequence[SectionCheck] = ()) -> None:
        self.cls = cls
        self.fields = tuple(keys)
        self._checks = tuple(checks)
        names = [f.name for f in dataclasses.fields(cls)]
        given = [k.field_name for k in keys]
        if sorted(names) != sorted(given):
            raise TypeError(f"the keys of {cls.__name__} must fill each field once: fields {names}, keys {given}")

    def parse(self, value: object, path: str, errors: list[str]) -> Any:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            where = "the top level" if not path else "this section"
            errors.append(at(path, f"{where} must be a mapping of keys, got {show(value)}"))
            return BAD
        before = len(errors)
        names = [k.name for k in self.fields]
        for key in value:
            if key not in names:
                errors.append(at(path, f"unknown key {show(key)}{suggest(key, names)}"))
        kwargs: dict[str, object] = {}
        fields_ok = True
        for k in self.fields:
            raw = value.get(k.name)
            if raw is None:
                if k.required:
                    errors.append(at(path, f"missing required key {k.name!r}"))
                    fields_ok = False
                continue
            parsed = k.node.parse(raw, join(path, k.name), errors)
            if parsed is BAD:
                fields_ok = False
            else:
                kwargs[k.field_name] = parsed
        built = self.cls(**kwargs) if fields_ok else None
        given = frozenset(key for key, v in value.items() if v is not None)
        for check in self._checks:
            for key, problem in check(built, given):
                errors.append(at(join(path, key) if key else path, problem))
        return BAD if len(errors) > before or built is None else built

    def dump(self, value: Any) -> dict[str, object]:
        out: dict[str, object] = {}
        for k in self.fields:
            v = getattr(value, k.field_name)
            if v is not None:
                out[k.name] = k.node.dump(v)
        return out

    def keys(self, path: str) -> Iterator[str]:
        for k in self.fields:
            sub = join(path, k.name)
            yield sub
            yield from k.node.keys(sub)

    def preflight(self, value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
        for k in self.fields:
            v = getattr(value, k.field_name)
            if v is None:
                continue
            sub = join(path, k.name)
            if k.preflight is not None:
                yield sub, k.preflight, v
            yield from k.node.preflight(v, sub)

    def default_text(self, key: Key) -> str:
        """The reference table's default column for ``key``: its override, ``required``, or the default."""
        if key.default is not None:
            return key.default
        if key.required:
            return "required"
        field = next(f for f in dataclasses.fields(self.cls) if f.name == key.field_name)
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            return "required"
        if value is None or value == {} or value == ():
            return "none"
        if isinstance(key.node, Scalar):
            return f"`{key.node.show_value(value)}`"
        return "see below"


class ListOf(Node):
    """A list of items of one node, built into a tuple; ``checks`` look across items."""

    def __init__(self, item: Node, checks: Sequence[ListCheck] = ()) -> None:
        self.item = item
        self._checks = tuple(checks)

    def parse(self, value: object, path: str, errors: list[str]) -> Any:
        if value is None:
            return ()
        if not isinstance(value, list):
            errors.append(at(path, f"must be a list, got {show(value)}"))
            return BAD
        before = len(errors)
        good: list[tuple[int, object]] = []
        for i, raw in enumerate(value):
            parsed = self.item.parse(raw, f"{path}[{i}]", errors)
            if parsed is not BAD:
                good.append((i, parsed))
        for check in self._checks:
            for sub, problem in check(good):
                errors.append(at(path + sub, problem))
        return BAD if len(errors) > before else tuple(item for _, item in good)

    def dump(self, value: Any) -> list[object]:
        return [self.item.dump(v) for v in value]

    def keys(self, path: str) -> Iterator[str]:
        return self.item.keys(path + "[]")

    def preflight(self, value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
        for i, v in enumerate(value):
            yield from self.item.preflight(v, f"{path}[{i}]")


class MapOf(Node):
    """A mapping with free keys (checked by ``key``, which raises ``ValueError``) and values of one node.

    ``documented_keys`` are the keys that :meth:`keys` lists when the set of
    keys is closed (e.g. every finding kind); ``placeholder`` is the name
    :meth:`keys` lists the value's keys under when keys are free
    (``alerts.sinks.NAME``). A null value is an error here.
    """

    def __init__(self, key: Callable[[object], object], value: Node, dump_key: Callable[[Any], str] = str,
                 documented_keys: Sequence[str] = (), placeholder: str | None = None) -> None:
        self._key = key
        self.value = value
        self._dump_key = dump_key
        self._documented = tuple(documented_keys)
        self._placeholder = placeholder

    def parse(self, value: object, path: str, errors: list[str]) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            errors.append(at(path, f"must be a mapping, got {show(value)}"))
            return BAD
        before = len(errors)
        out: dict[object, object] = {}
        for raw_key, raw_value in value.items():
            try:
                key = self._key(raw_key)
            except ValueError as exc:
                errors.append(at(path, str(exc)))
                continue
            parsed = self.value.parse(raw_value, join(path, raw_key), errors)
            if parsed is not BAD:
                out[key] = parsed
        return BAD if len(errors) > before else out

    def dump(self, value: Any) -> dict[str, object]:
        return {self._dump_key(k): self.value.dump(v) for k, v in value.items()}

    def keys(self, path: str) -> Iterator[str]:
        if self._placeholder is not None:
            yield from self.value.keys(join(path, self._placeholder))
        for key in self._documented:
            sub = join(path, key)
            yield sub
            yield from self.value.keys(sub)

    def preflight(self, value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
        for k, v in value.items():
            yield from self.value.preflight(v, join(path, self._dump_key(k)))


class Tagged(Node):
    """A mapping whose ``type`` key picks the section (of ``sections``) that validates the rest."""

    def __init__(self, sections: Mapping[str, Section], what: str = "sink") -> None:
        self.sections = dict(sections)
        self._what = what

    def parse(self, value: object, path: str, errors: list[str]) -> Any:
        types = ", ".join(self.sections)
        if not isinstance(value, dict):
            errors.append(at(path, f"must be a mapping with a 'type' ({types}), got {show(value)}"))
            return BAD
        kind = value.get("type")
        if kind is None:
            errors.append(at(path, f"missing required key 'type' (one of {types})"))
            return BAD
        if not isinstance(kind, str) or kind not in self.sections:
            errors.append(at(join(path, "type"),
                             f"unknown {self._what} type {show(kind)}{suggest(kind, self.sections)};"
                             f" must be one of {types}"))
            return BAD
        return self.sections[kind].parse(value, path, errors)

    def dump(self, value: Any) -> object:
        return self.sections[value.type].dump(value)

    def keys(self, path: str) -> Iterator[str]:
        seen: set[str] = set()
        for section in self.sections.values():
            for key in section.keys(path):
                if key not in seen:
                    seen.add(key)
                    yield key

    def preflight(self, value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
        return self.sections[value.type].preflight(value, path)


# --------------------------------------------------------------------------
# Leaf nodes (each wraps one check of portwatch.config.grammar)


def integer(low: int, high: int | None = None) -> Scalar:
    """An int in ``low..high`` (``high`` None = no upper bound)."""
    return Scalar(lambda v: grammar.integer(v, low, high))


def ratio() -> Scalar:
    """A number ``0 < x <= 1``, stored as float."""
    return Scalar(grammar.ratio)


def duration(minimum: float) -> Scalar:
    """Seconds as a number or a duration string, at least ``minimum``; shown as a duration."""
    return Scalar(lambda v: grammar.duration(v, minimum), show=grammar.format_duration)


def string() -> Scalar:
    """A non-empty string."""
    return Scalar(grammar.string)


def boolean() -> Scalar:
    """``true`` or ``false``."""
    return Scalar(grammar.boolean)


def choice(choices: Sequence[str]) -> Scalar:
    """One of ``choices``."""
    return Scalar(lambda v: grammar.choice(v, choices))


def enum(enum_type: Any) -> Scalar:
    """One of an enum's values, built into the enum member."""
    values = [m.value for m in enum_type]
    return Scalar(lambda v: enum_type(grammar.choice(v, values)), lambda m: m.value)


def ip() -> Scalar:
    """An IP address, stored canonical."""
    return Scalar(grammar.ip)


def port_range() -> Scalar:
    """A port or an inclusive range ``"low-high"``, as a PortRange."""
    return Scalar(grammar.port_range, grammar.format_port_range)


def absolute_path() -> Scalar:
    """An absolute path, stored as a Path (whether it is readable is a preflight check)."""
    return Scalar(grammar.absolute_path, str)


def listen_address() -> Scalar:
    """A ``host:port`` listen address, kept as written."""
    return Scalar(grammar.listen_address)


def bcrypt_hash() -> Scalar:
    """A bcrypt hash (never quoted back)."""
    return Scalar(grammar.bcrypt_hash)


def url() -> Scalar:
    """An http(s) URL (credentials never quoted back)."""
    return Scalar(grammar.url)


def header_value() -> Scalar:
    """An HTTP header value (never quoted back)."""
    return Scalar(grammar.header_value)


def name(what: str) -> Scalar:
    """A rule or sink name."""
    return Scalar(lambda v: grammar.name(v, what))


def command() -> Scalar:
    """A command line: absolute program path, then arguments; dumped as a list."""
    return Scalar(grammar.command, list)

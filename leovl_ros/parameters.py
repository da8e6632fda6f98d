"""Settings declared once: a dataclass field carries its default and its help text.

``setting(text, default)`` is such a field. A dataclass of them is both the library's
configuration (validated in its ``__post_init__``) and, flattened by :func:`parameters`,
the list of ROS parameters a node declares: a nested dataclass field contributes its own
settings at its place, so a new parameter is one field (plus its line in the node's YAML
file). Where the node's name or default differs from the field's (a unit suffix the node
never had, a log file the library must not write by default), the field says so once.
ROS-free: imported by the assistant, the training side and the ROS adapter alike.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Parameter", "build", "parameters", "setting"]


def setting(text: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING,
            param: str | None = None, param_default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with help text; ``param`` / ``param_default``: the node's name and
    default where they differ from the field's."""
    meta = {"help": text, "param": param, "param_default": param_default}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Parameter:
    name: str  # the ROS parameter name
    path: tuple[str, ...]  # field names from the top dataclass down to the field
    default: Any
    description: str


def _nested(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def parameters(cls: type, _path: tuple[str, ...] = ()) -> list[Parameter]:
    """Every setting of ``cls`` in field order, nested dataclasses expanded in place; fields
    without help text are library-only (not parameters)."""
    nested, out = _nested(cls), []
    for f in dataclasses.fields(cls):
        if f.name in nested:
            out += parameters(nested[f.name], _path + (f.name,))
        elif "help" in f.metadata:
            default = f.metadata["param_default"]
            if default is dataclasses.MISSING:
                default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            out.append(Parameter(f.metadata["param"] or f.name, _path + (f.name,), default, f.metadata["help"]))
    return out


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """``cls`` from parameter values by parameter name (missing ones keep the field default);
    an unknown name is a ValueError, the dataclasses' own checks raise theirs."""
    unknown = sorted(set(values) - {p.name for p in parameters(cls)})
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}")
    return _build(cls, values)


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    nested, kwargs = _nested(cls), {}
    for f in dataclasses.fields(cls):
        if f.name in nested:
            kwargs[f.name] = _build(nested[f.name], values)
        elif "help" in f.metadata and (f.metadata["param"] or f.name) in values:
            kwargs[f.name] = values[f.metadata["param"] or f.name]
    return cls(**kwargs)

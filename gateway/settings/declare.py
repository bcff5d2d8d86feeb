"""How a setting is declared, and the schema derived from the declarations.

Contract:

- A settings section is a class decorated with `@section`: a frozen, keyword-only dataclass.
- Each key is one field, declared once with `setting(...)`: its type is the field's annotation
  (`str`, `int`, `float`, `bool`, `Path`, optionally `| None`; or `tuple[str, ...]`, a list of
  strings in the file), its default is `default=` (no
  default: the key is required), and the rest (`check`, `secret`, `resolve`, `help`) is the
  field's metadata. A secret is left out of the dataclass's repr.
- A field whose type is another `@section` class is a sub-section: `X | None = None` is an
  optional section (absent: None), any other is always read (its keys' defaults apply).
- `not_a_setting(why)` declares a field the loader fills itself (`Settings.config_path`); any
  other field without a declaration is a `TypeError` when the schema is derived, so a field
  cannot exist without being a key, nor a key without a field.
- `derive(cls) -> Section`: the tree the loader walks (`Leaf`s and `Section`s, in declaration
  order), with each leaf's kind, default, check, secret, resolve and help taken from its field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, dataclass_transform, overload

__all__ = [
    "MISSING",
    "Declared",
    "Kind",
    "Leaf",
    "Section",
    "derive",
    "not_a_setting",
    "section",
    "setting",
]

_T = TypeVar("_T")

Kind = Literal["str", "int", "number", "bool", "strings"]
MISSING: Any = dataclasses.MISSING

_SETTING = "gateway.settings"  # the metadata key of a declared field
_DERIVED = "gateway.settings.derived"  # the metadata key of a field the loader fills itself
_KINDS: Mapping[type, Kind] = {str: "str", Path: "str", int: "int", float: "number", bool: "bool"}


@dataclass(frozen=True)
class Declared:
    """What a `setting(...)` says beside its type and default."""

    help: str
    check: Callable[[Any], Any] | None = None  # returns the normalised value or raises ValueError
    secret: bool = False  # never shown; "missing" says which environment variable can set it
    resolve: Callable[[Any, Path], Any] | None = None  # (checked value, settings folder) -> value


@overload
def setting(
    *,
    default: _T,
    help: str,
    check: Callable[[Any], Any] | None = None,
    secret: bool = False,
    resolve: Callable[[Any, Path], Any] | None = None,
) -> _T: ...
@overload
def setting(
    *,
    help: str,
    check: Callable[[Any], Any] | None = None,
    secret: bool = False,
    resolve: Callable[[Any, Path], Any] | None = None,
) -> Any: ...
def setting(
    *,
    default: Any = MISSING,
    help: str,
    check: Callable[[Any], Any] | None = None,
    secret: bool = False,
    resolve: Callable[[Any, Path], Any] | None = None,
) -> Any:
    """One settings key: the field's annotation is its type; no `default` makes it required."""
    declared = Declared(help=help, check=check, secret=secret, resolve=resolve)
    return dataclasses.field(default=default, repr=not secret, metadata={_SETTING: declared})


def not_a_setting(why: str) -> Any:
    """A required field that is no key: the loader fills it (`why` says from what)."""
    return dataclasses.field(metadata={_DERIVED: why})


@dataclass_transform(
    frozen_default=True,
    kw_only_default=True,
    field_specifiers=(setting, not_a_setting, dataclasses.field),
)
def section(cls: type[_T]) -> type[_T]:
    """A settings section: a frozen, keyword-only dataclass whose fields are its keys."""
    built = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    built.__settings_section__ = True  # type: ignore[attr-defined]
    return built


# --------------------------------------------------------------------------------------------
# The derived schema


@dataclass(frozen=True)
class Leaf:
    kind: Kind
    required: bool = False
    secret: bool = False  # never shown; "missing" says which environment variable can set it
    check: Callable[[Any], Any] | None = None  # returns the normalised value or raises ValueError
    default: Any = None  # the dataclass default (none when required)
    resolve: Callable[[Any, Path], Any] | None = None
    help: str = ""


@dataclass(frozen=True)
class Section:
    keys: Mapping[str, Leaf | Section]
    optional: bool = False  # absent = None (email.imap, email.ingress)
    cls: type | None = None  # the dataclass the section's values build


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and getattr(tp, "__settings_section__", False) is True


def _strip_none(tp: Any) -> tuple[Any, bool]:
    """(`X`, True) for `X | None`; (`tp`, False) otherwise."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def derive(cls: type) -> Section:
    """The schema of section class `cls` (recursively); TypeError for an undeclared field."""
    if not _is_section(cls):
        raise TypeError(f"{cls.__qualname__} is not a @section class")
    hints = typing.get_type_hints(cls)
    keys: dict[str, Leaf | Section] = {}
    for f in dataclasses.fields(cls):
        tp, nullable = _strip_none(hints[f.name])
        where = f"{cls.__qualname__}.{f.name}"
        if _DERIVED in f.metadata:
            continue
        if _is_section(tp):
            if _SETTING in f.metadata:
                raise TypeError(f"{where}: a section is not declared with setting()")
            child = derive(tp)
            if nullable:
                if f.default is not None:
                    raise TypeError(f"{where}: an optional section defaults to None")
                keys[f.name] = Section(child.keys, optional=True, cls=tp)
            else:
                keys[f.name] = child
            continue
        declared = f.metadata.get(_SETTING)
        if not isinstance(declared, Declared):
            raise TypeError(f"{where}: declare it with setting(...) (or not_a_setting(...))")
        kind: Kind | None = "strings" if tp == tuple[str, ...] else _KINDS.get(tp)
        if kind is None:
            raise TypeError(
                f"{where}: a setting is str, int, float, bool, Path or tuple[str, ...], "
                f"not {tp!r}"
            )
        if tp is Path and declared.resolve is None:
            raise TypeError(f"{where}: a Path setting needs resolve= (relative to what?)")
        if f.default_factory is not MISSING:
            raise TypeError(f"{where}: a setting's default is a plain value")
        keys[f.name] = Leaf(
            kind=kind,
            required=f.default is MISSING,
            secret=declared.secret,
            check=declared.check,
            default=None if f.default is MISSING else f.default,
            resolve=declared.resolve,
            help=declared.help,
        )
    return Section(keys, cls=cls)

"""TOML configuration machinery shared by every stage: reading a file, typing one section, stating defaults.

The run configuration is one TOML file of sections. Each section is a frozen dataclass owned by the stage it
configures (``ingest.config``, ``features.config``, ``models.config``, ``inference.config``); the run
configuration that assembles them is :mod:`flows.config`. This module knows nothing of any stage: it turns a TOML
table into a section dataclass, checking unknown keys and types against the dataclass' own field annotations, and
it lets a section take its defaults from the stage spec it configures (:func:`default`), so that every default
lives in one place.

Errors are :class:`~pipeline.errors.ConfigError` naming the file and section, e.g.
``run.toml [observe]: 'v_cut' must be float, got 'fast'``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError

S = TypeVar("S")


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed TOML file ``path``; a missing or malformed file is a one-line ConfigError naming it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: configuration file not found")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the configuration ({exc})") from None


def default(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (calling its factory): a section's default taken from the
    stage spec it configures, so the value has one home.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Spec:
    ...     r: float = 1.6
    >>> default(Spec, "r")
    1.6
    """
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{cls.__name__}.{name} has no default")
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def table(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    """Section ``name`` of the parsed TOML ``data`` as a dict ({} when absent)."""
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: [{name}] must be a table, got {value!r}")
    return dict(value)


def section(cls: type[S], values: Mapping[str, Any], where: str) -> S:
    """The section dataclass ``cls`` built from a TOML table, every key and type checked.

    ``where`` prefixes every error (``"run.toml [train]"``). Integers are accepted for float fields; booleans
    are never numbers; lists and tuples of ``int``/``str``/``float`` are checked item by item (a tuple field gets a
    tuple); a union of such types (``float | tuple[float, float]``) takes the first form the value fits. A
    ConfigError raised by the dataclass' own validation (``__post_init__``) is prefixed with ``where``.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    typed = {key: _coerce(value, hints[key], key, where) for key, value in values.items()}
    try:
        return cls(**typed)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_SCALARS: dict[type, tuple[type, ...]] = {float: (int, float), int: (int,), str: (str,), Path: (str,), bool: (bool,)}


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: TOML has no null, so the value is an X
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) > 1:  # X | Y (e.g. float | tuple[float, float]): the first form the value has
            for option in options:
                try:
                    return _coerce(value, option, key, where)
                except ConfigError:
                    pass
            raise ConfigError(f"{where}: '{key}' must be {' or '.join(_name(o) for o in options)}, got {value!r}")
        hint = options[0]
        origin = typing.get_origin(hint)
    if origin in (list, tuple):
        item = typing.get_args(hint)[0]
        ok = _SCALARS[item]
        if not isinstance(value, list) or any(isinstance(v, bool) != (item is bool) or not isinstance(v, ok)
                                              for v in value):
            raise ConfigError(f"{where}: '{key}' must be a list of {item.__name__}, got {value!r}")
        items = [item(v) for v in value]
        return tuple(items) if origin is tuple else items
    ok = _SCALARS.get(hint, (str,))
    if isinstance(value, bool) != (hint is bool) or not isinstance(value, ok):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{where}: '{key}' must be {'str' if name == 'Path' else name}, got {value!r}")
    if hint is float:
        return float(value)
    if hint is Path:
        return Path(value)
    return value


def _name(hint: Any) -> str:
    """How an error names a type: ``float``, ``str``, ``list of float``."""
    if typing.get_origin(hint) in (list, tuple):
        return f"list of {_name(typing.get_args(hint)[0])}"
    name = getattr(hint, "__name__", str(hint))
    return "str" if name == "Path" else name


def resolve_path(value: str | Path, base: Path) -> Path:
    """``value`` with ``~`` expanded, relative to ``base`` (the configuration file's folder) unless absolute."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p

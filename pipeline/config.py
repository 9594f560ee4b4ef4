"""TOML configuration machinery shared by every stage: reading a file, typing one section, stating defaults.

The run configuration is one TOML file of sections. Each section is a frozen dataclass owned by the stage it
configures (``ingest.config``, ``features.config``, ``models.config``, ``inference.config``); the run
configuration that assembles them is :mod:`flows.config`. This module knows nothing of any stage: it turns a TOML
table into a section dataclass, checking unknown keys and types against the dataclass' own field annotations, and
it lets a section take its defaults from the stage spec it configures (:func:`default`), so that every default
lives in one place.

Errors are :class:`~pipeline.errors.ConfigError` naming the file, the section and the key, e.g.
``run.toml [observe] v_cut: expected a number, got 'fast'``. A section's ``__post_init__`` checks every key with
:func:`check_number` / :func:`check_choice` (or raises ``ConfigError(message, key=...)`` itself) and does not know
the file: :func:`section` puts it in front.
"""

from __future__ import annotations

import dataclasses
import math
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
        raise ConfigError(f"unknown key(s) {unknown}; expected some of {sorted(names)}", where=where)
    try:
        typed = {key: _coerce(value, hints[key], key) for key, value in values.items()}
        return cls(**typed)
    except ConfigError as exc:
        raise exc.located(where) from None


_SCALARS: dict[type, tuple[type, ...]] = {float: (int, float), int: (int,), str: (str,), Path: (str,), bool: (bool,)}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: TOML has no null, so the value is an X
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) > 1:  # X | Y (e.g. float | tuple[float, float]): the first form the value has
            for option in options:
                try:
                    return _coerce(value, option, key)
                except ConfigError:
                    pass
            raise ConfigError(f"expected {' or '.join(_name(o) for o in options)}, got {value!r}", key=key)
        hint = options[0]
        origin = typing.get_origin(hint)
    if origin in (list, tuple):
        item = typing.get_args(hint)[0]
        ok = _SCALARS[item]
        if not isinstance(value, list) or any(isinstance(v, bool) != (item is bool) or not isinstance(v, ok)
                                              for v in value):
            raise ConfigError(f"expected {_name(hint)}, got {value!r}", key=key)
        items = [item(v) for v in value]
        return tuple(items) if origin is tuple else items
    ok = _SCALARS.get(hint, (str,))
    if isinstance(value, bool) != (hint is bool) or not isinstance(value, ok):
        raise ConfigError(f"expected {_name(hint)}, got {value!r}", key=key)
    if hint is float:
        return float(value)
    if hint is Path:
        return Path(value)
    return value


_WORDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          Path: ("a path", "paths"), bool: ("true or false", "booleans")}


def _name(hint: Any) -> str:
    """How an error names a type: ``a number``, ``a string``, ``a list of numbers``."""
    if typing.get_origin(hint) in (list, tuple):
        return f"a list of {_WORDS.get(typing.get_args(hint)[0], ('', 'values'))[1]}"
    return _WORDS.get(hint, (getattr(hint, "__name__", str(hint)), ""))[0]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_number(key: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False, unit: str = "") -> None:
    """Refuse ``value`` of ``key`` unless it is a finite number (an integer with ``integer``) within the bounds.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``. The error is one line, e.g.
    ``r_aperture: expected a number > 0 [Mpc/h], got nan``, located by :func:`section`.

    >>> check_number("v_cut", 2500.0, low=0, low_open=True, unit="km/s")
    >>> check_number("regions_per_side", 0, low=1, high=64, integer=True)
    Traceback (most recent call last):
    ...
    pipeline.errors.ConfigError: regions_per_side: expected an integer in [1, 64], got 0
    """
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else (
        _is_number(value) and math.isfinite(value))
    if ok:
        ok = not ((low is not None and (value < low or (low_open and value == low)))
                  or (high is not None and (value > high or (high_open and value == high))))
    if not ok:
        what = describe_number(low=low, high=high, low_open=low_open, high_open=high_open, integer=integer, unit=unit)
        raise ConfigError(f"expected {what}, got {value!r}", key=key)


def describe_number(*, low: float | None = None, high: float | None = None, low_open: bool = False,
                    high_open: bool = False, integer: bool = False, unit: str = "") -> str:
    """``"an integer in [1, 64]"``, ``"a number > 0 [Mpc/h]"``: what :func:`check_number` expects, in words."""
    what = "an integer" if integer else "a number"
    if low is not None and high is not None:
        what += f" in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    elif low is not None:
        what += f" {'>' if low_open else '>='} {_bound(low)}"
    elif high is not None:
        what += f" {'<' if high_open else '<='} {_bound(high)}"
    return what + (f" [{unit}]" if unit else "")


def _bound(value: float) -> str:
    """A bound as people write it: ``16777216`` and ``1000000`` for integers, ``0.5`` and ``1e+300`` for others."""
    if float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}"


def check_choice(key: str, value: Any, choices: tuple | list) -> None:
    """Refuse ``value`` of ``key`` unless it is one of ``choices``: ``model: expected one of ['flow', 'mdn'],
    got 'svm'``."""
    if value not in choices:
        raise ConfigError(f"expected one of {list(choices)}, got {value!r}", key=key)


def resolve_path(value: str | Path, base: Path) -> Path:
    """``value`` with ``~`` expanded, relative to ``base`` (the configuration file's folder) unless absolute."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p

"""Configuration: a dataclass per concern, set by defaults <- a TOML file <- `--set` overrides.

A config is a dataclass whose fields are section dataclasses (e.g. `model`, `optim`, `data`), each
field with a default and a comment giving its unit or its source in the paper. `load_config`
applies a TOML file and then `section.key=value` strings, checking names and types, so a typo is
a one-line error listing the valid keys instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import TypeVar

from alexnet.errors import UsageError, not_found

T = TypeVar("T")
INT_MAX = 2**63 - 1  # every integer setting fits a 64-bit integer; each section's validate() checks its own range
INT_MIN = -(2**63)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple = ()) -> T:
    """Build `cls()` (defaults), then apply the TOML file at `path`, then the overrides in order."""
    config = from_dict(cls, {})
    if path is not None:
        config = apply_file(config, path)
    return apply_overrides(config, overrides)


def apply_overrides(config: T, overrides) -> T:
    """Apply `section.key=value` strings in order, checking the sections once all are applied (so
    that `--set model.name=resnet18 --set model.init=null` may pass through a mixed state)."""
    for item in overrides:
        config = apply_override(config, item, check=False)
    return _validated(config, "--set") if overrides else config


def apply_file(config: T, path: str | Path) -> T:
    """Apply the keys of a TOML file to `config` (the keys it does not name keep their values)."""
    path = Path(path)
    if not path.is_file():
        raise not_found(path, "config file")
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    return merge(config, values, source=str(path))


def from_dict(cls: type[T], values: dict, *, source: str = "config") -> T:
    """Build a config from nested dicts (a TOML file, or a config saved with a run)."""
    return merge(cls(), values, source=source)


def merge(config: T, values: dict, *, source: str = "config") -> T:
    """`config` with the keys of nested dicts {section: {key: value}} replaced, checked by type."""
    sections = {f.name: f for f in dataclasses.fields(config)}
    for name, section_values in values.items():
        if name not in sections:
            raise UsageError(f"{source}: unknown section [{name}]; valid sections: {', '.join(sections)}")
        section_cls = _resolve(type(config), sections[name])
        if not isinstance(section_values, dict):
            raise UsageError(f"{source}: [{name}] must be a table of keys")
        fields = {f.name: f for f in dataclasses.fields(section_cls)}
        section_kwargs = {}
        for key, value in section_values.items():
            if key not in fields:
                raise UsageError(f"{source}: unknown key {name}.{key}; valid keys in [{name}]: {', '.join(fields)}")
            section_kwargs[key] = _coerce(value, _resolve(section_cls, fields[key]), f"{name}.{key}", source)
        section = dataclasses.replace(getattr(config, name), **section_kwargs)
        config = dataclasses.replace(config, **{name: section})
    return _validated(config, source)


def apply_override(config: T, item: str, *, check: bool = True) -> T:
    """Apply one `section.key=value` string (value parsed by the field's type); check=False leaves
    the sections' own checks (validate) to the caller."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UsageError(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr=0.005")
    dotted, raw = item.split("=", 1)
    section_name, key = dotted.strip().split(".", 1)
    sections = {f.name: f for f in dataclasses.fields(config)}
    if section_name not in sections:
        raise UsageError(f"--set {item!r}: unknown section {section_name!r}; valid sections: {', '.join(sections)}")
    section = getattr(config, section_name)
    fields = {f.name: f for f in dataclasses.fields(section)}
    key, _, entry = key.partition(".")  # section.key.entry: one entry of a table (dict) key
    if key not in fields:
        raise UsageError(f"--set {item!r}: unknown key {dotted}; valid keys in {section_name}: {', '.join(fields)}")
    kind = _resolve(type(section), fields[key])
    value = _parse_literal(raw.strip())
    if entry:
        if typing.get_origin(kind) is not dict:
            raise UsageError(
                f"--set {item!r}: {section_name}.{key} is not a table; use --set {section_name}.{key}=VALUE"
            )
        value = {**getattr(section, key), entry: value}
    value = _coerce(value, kind, f"{section_name}.{key}", "--set")
    config = dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{key: value})})
    return _validated(config, "--set") if check else config


def checked(config: T, cls: type[T], source: str = "config") -> T:
    """A config built in Python, checked as a TOML file or --set would be: `cls` itself, every value
    of the type its field declares (coerced as --set does: "0.1" -> 0.1 for a float) and each
    section's own checks. Raises UsageError naming the field."""
    if not isinstance(config, cls):
        raise UsageError(f"{source}: expected an alexnet {cls.__name__}, got {type(config).__name__}")
    values = {}
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        section_cls = _resolve(cls, section)
        if not isinstance(part, section_cls):
            raise UsageError(f"{source}: {section.name} must be a {section_cls.__name__}, got {type(part).__name__}")
        values[section.name] = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}
    return merge(cls(), values, source=source)


def to_dict(config) -> dict:
    """Nested plain dict of a config (what is saved with a run and in every checkpoint)."""
    return dataclasses.asdict(config)


def to_toml(config) -> str:
    """The config as a TOML file a user can edit and pass back with --config."""
    lines = []
    for name, section in to_dict(config).items():
        lines.append(f"[{name}]")
        for key, value in section.items():
            if value is None:
                lines.append(f"# {key} = (unset)")
            elif isinstance(value, dict):  # a TOML inline table
                items = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{{items}}}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


def describe(cls) -> str:
    """Every key with its default, for --help texts."""
    out = []
    for section in dataclasses.fields(cls):
        section_cls = _resolve(cls, section)
        keys = ", ".join(f"{f.name}={_default(f)!r}" for f in dataclasses.fields(section_cls))
        out.append(f"{section.name}: {keys}")
    return "\n".join(out)


# -- helpers -------------------------------------------------------------------------------------


def _validated(config, source: str):
    for section in dataclasses.fields(config):
        check = getattr(getattr(config, section.name), "validate", None)
        if check is not None:
            try:
                check()
            except (ValueError, AssertionError) as exc:
                raise UsageError(f"{source}: [{section.name}] {exc}") from None
    return config


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _resolve(owner, field: dataclasses.Field):
    hints = typing.get_type_hints(owner)
    return hints[field.name]


def _parse_literal(raw: str):
    """A command-line value: TOML literal if it parses (numbers, true/false, [lists], "strings")."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: a string


def _coerce(value, kind, name: str, source: str):
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        kinds = [a for a in args if a is not type(None)]
        errors = []
        for candidate in kinds:
            try:
                return _coerce(value, candidate, name, source)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[0])
    if origin is typing.Literal:
        if value not in args:
            raise UsageError(f"{source}: {name} = {value!r} is not valid; choose one of: {', '.join(map(str, args))}")
        return value
    if origin is dict:  # a table: {name: value}, each value of the second type argument
        if not isinstance(value, dict):
            raise UsageError(f"{source}: {name} = {value!r} is not a table; give {{key = value, ...}}")
        inner = args[1] if len(args) > 1 else str
        return {str(k): _coerce(v, inner, f"{name}.{k}", source) for k, v in value.items()}
    if origin in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        inner = args[0] if args else str
        converted = [_coerce(v, inner, name, source) for v in items]
        return tuple(converted) if origin is tuple else converted
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if not INT_MIN <= int(value) <= INT_MAX:  # torch and numpy take 64-bit integers: an overflow, deep inside
                raise UsageError(f"{source}: {name} = {value!r} is out of range (a whole number within +-{INT_MAX})")
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            if not math.isfinite(float(value)):  # nan or inf would pass every range check after this
                raise UsageError(f"{source}: {name} = {value!r} is not a finite number")
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except UsageError:
        raise
    except (TypeError, ValueError):
        raise UsageError(f"{source}: {name} = {value!r} is not a valid {kind.__name__}") from None
    return value

"""Typed, frozen configuration loaded from ``conf/*.yaml``.

Each concern owns a small frozen dataclass whose defaults are the documented defaults. A YAML
file may set any subset of its fields; command-line flags override file values::

    cfg = load_config(SparkConfig, "spark.yaml", overrides={"master": args.master})

An unknown key or a value of the wrong type is a :class:`~pipeline.errors.ConfigError` that
names the file, the key and the expected type.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from pipeline.errors import ConfigError

__all__ = ["conf_dir", "from_mapping", "load_config", "load_options", "resolve_conf_path"]

T = TypeVar("T")

_ENV_CONF_DIR = "PIPELINE_CONF_DIR"


def conf_dir() -> Path | None:
    """The folder that holds the project's YAML configs.

    ``$PIPELINE_CONF_DIR`` when set, else the repository's ``conf/`` next to the package (an
    editable install or a checkout), else ``None`` (defaults only).
    """
    env = os.environ.get(_ENV_CONF_DIR)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent / "conf"
    return here if here.is_dir() else None


def resolve_conf_path(name_or_path: str | os.PathLike[str]) -> Path | None:
    """Find a config file.

    A bare file name (``"reader.yaml"``, no folder part) is looked up in :func:`conf_dir` first,
    so that a stray file of that name in the working directory cannot change the defaults, then
    in the working directory (``--config my.yaml``). Anything with a folder part
    (``./reader.yaml``, ``conf/x.yaml``, an absolute path) is taken as it is.

    Returns ``None`` when a bare name is found nowhere, so that callers fall back to the
    dataclass defaults. A path with a folder part that does not exist is an error: the user
    asked for that file.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    bare = os.sep not in text and (os.altsep is None or os.altsep not in text)
    if bare:
        base = conf_dir()
        if base is not None and (base / text).is_file():
            return base / text
        return path if path.is_file() else None
    if path.is_file():
        return path
    raise ConfigError(f"config file {text!r} does not exist", hint="check the --config path")


def load_config(
    cls: type[T],
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    section: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from its defaults, a YAML file and overrides, in that order.

    Args:
        cls: A dataclass type.
        name_or_path: A YAML file path, or a bare file name looked up in :func:`conf_dir`.
            Defaults to ``None`` (no file).
        section: Read only this top-level mapping of the file. Defaults to ``None`` (the whole
            file).
        overrides: Values that win over the file, e.g. parsed CLI flags. Keys whose value is
            ``None`` are ignored (a flag that was not given). Defaults to ``None``.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: The file is not a mapping, or a key is unknown or of the wrong type.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    path = resolve_conf_path(name_or_path) if name_or_path is not None else None
    if path is not None:
        source = str(path)
        raw = _parsed_yaml(path, source)
        if raw is None:
            raw = {}
        if section is not None:
            if not isinstance(raw, dict) or section not in raw:
                raise ConfigError(f"{source}: has no top-level section {section!r}")
            raw = raw[section] or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(raw).__name__}")
        data.update(raw)
    if overrides:
        data.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(cls, data, source=source)


_PARSED: dict[str, tuple[str, Any]] = {}  # path -> (its text, that text parsed)


def _parsed_yaml(path: Path, source: str) -> Any:
    """``yaml.safe_load`` of ``path``, parsed again only when its text changed.

    An ``open_loader`` reads several config files (reader, loader, storage); parsing them at
    every call cost ~1.5 ms each (reading one is ~0.02 ms). A copy is returned, so that callers
    may change what they get.
    """
    text = path.read_text(encoding="utf-8")
    held = _PARSED.get(source)
    if held is not None and held[0] == text:
        return copy.deepcopy(held[1])
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    _PARSED[source] = (text, copy.deepcopy(raw))
    return raw


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str = "<mapping>") -> T:
    """Validate ``data`` against the dataclass ``cls`` and build an instance.

    Nested dataclasses, ``Optional``, ``Literal``, ``tuple[...]``, ``list[...]`` and
    ``dict[str, ...]`` are checked. Ints are accepted where floats are expected.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} for {cls.__name__}; allowed keys: {allowed}")
    kwargs = {name: _coerce(value, hints[name], f"{source}: key {name!r}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping ({tp.__name__}), got {value!r}")
        return from_mapping(tp, value, source=where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where} must have {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_t = args[0] if args else Any
            items = [_coerce(v, item_t, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        key_t, val_t = args if args else (Any, Any)
        return {
            _coerce(k, key_t, f"{where} key"): _coerce(v, val_t, f"{where}[{k!r}]") for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be float, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be int, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be bool (true/false), got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be str, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
    return value


def _config_file_section(config_path: str | None, section: str) -> tuple[dict[str, Any], str]:
    if not config_path:
        return {}, ""
    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"config file {config_path!r} does not exist", hint="check the --config path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: expected a mapping with sections such as `convert:`")
    values = raw.get(section) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{config_path}: section {section!r} must be a mapping")
    return values, f"{config_path}: section {section!r}"


def load_options(
    cls: type[T],
    default_file: str,
    *,
    config_path: str | os.PathLike[str] | None = None,
    section: str,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from ``conf/<default_file>``, then ``section`` of ``--config``, then flags.

    This is the one meaning of ``--config FILE`` in every command: a YAML whose sections are laid
    over the files of ``conf/`` (keys the file leaves out keep the ``conf/`` value).

    Args:
        cls: A frozen dataclass (a kind's options, ``ConvertConfig``, ``SparkConfig``, ...).
        default_file: Bare file name in ``conf/``, e.g. ``"convert_images.yaml"``.
        config_path: The ``--config`` file, if any. Defaults to ``None``.
        section: Section of the ``--config`` file for ``cls``, e.g. ``"images"``.
        overrides: Parsed flags; ``None`` values mean "not given". Defaults to ``None``.

    Raises:
        ConfigError: A file or key is invalid; the message names the file and key.
    """
    values, where = _config_file_section(os.fspath(config_path) if config_path else None, section)
    if values:
        from_mapping(cls, values, source=where)  # validate here so errors name the --config file
    merged = {**values, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return load_config(cls, default_file, overrides=merged)

"""Typed configs: YAML files and dotted ``a.b=value`` overrides mapped onto dataclasses, every value checked against
its field's type annotation.

One system for every command that takes a config (``recsparse train``, ``recsparse sparse run``). A config is a
tree of dataclasses that derive from :class:`Config`; adding a field with a type annotation and a default is all it
takes for it to be loadable, overridable and type-checked. Range and cross-field rules go in ``validate()``.

Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``pathlib.Path``, ``Literal[...]``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``Any`` and nested dataclasses. The rules are strict where a
silent conversion would hide a mistake:

* ``int``: an integer (``True``, ``2.5`` and ``"abc"`` are rejected; a quoted ``"3"`` is read as 3);
* ``float``: a finite number; a string that parses as one is accepted because YAML 1.1 reads ``1e-3`` as a string;
  ``.inf``/``nan`` and booleans are rejected;
* ``bool``: ``true``/``false`` only (YAML's ``yes``/``no``/``on``/``off`` are already booleans; ``1`` or
  ``"maybe"`` are rejected);
* ``str``: a string (a bare ``2024`` in YAML is an int: quote it);
* unknown keys are errors, naming the dotted key and the fields that exist.

A section::

    @dataclass
    class OptimConfig(Config):
        lr: float = 1e-3
        kind: Literal["adam", "sgd"] = "adam"

        def validate(self) -> None:
            check_positive("optim.lr", self.lr)

Every error is a :class:`~recsparse.errors.ConfigError` whose message names the dotted field and where the value came
from (``FILE:LINE`` for a YAML value, the override for an override), e.g.
``trainer.max_epochs: expected an integer, got 2.5 (override trainer.max_epochs=2.5)``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from recsparse.errors import ConfigError

T = TypeVar("T")

__all__ = ["Config", "build", "load", "load_yaml", "apply_overrides", "parse_override", "check_value", "check_name",
           "SAFE_NAME"]


class _Invalid(Exception):
    """A value does not fit its annotation; ``path`` is the dotted field, filled in while unwinding."""

    def __init__(self, path: str, msg: str) -> None:
        super().__init__(msg)
        self.path, self.msg = path, msg


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if tp is Path:
        return "a path"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        return f"a list of {_describe(typing.get_args(tp)[0])}" if typing.get_args(tp) else "a list"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return getattr(tp, "__name__", str(tp))


def _hints(cls: type) -> dict[str, Any]:
    cached = cls.__dict__.get("_config_hints")
    if cached is None:
        cached = typing.get_type_hints(cls)
        try:
            setattr(cls, "_config_hints", cached)
        except (AttributeError, TypeError):  # slots / frozen classes: just don't cache
            pass
    return cached


def _convert(tp: Any, value: Any, path: str) -> Any:
    """``value`` checked (and converted where lossless: int -> float, ``"1e-3"`` -> float, tuple -> list) against
    the annotation ``tp``; raises :class:`_Invalid` naming ``path``."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _convert(args[0], value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except _Invalid as e:
                errors.append(e)
        alts = [a for a in args if a is not type(None)]
        section = dataclasses.is_dataclass(alts[0]) and isinstance(value, Mapping)
        if len(errors) == 1 and (errors[0].path != path or section):
            raise errors[0]  # Optional[section] given a mapping: the section's own error is more precise
        raise _Invalid(path, f"expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Invalid(path, f"must be {_describe(tp)}; got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise _Invalid(path, f"expected an integer, got {value!r}")
    if tp is float:
        x: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            x = float(value)
        elif isinstance(value, str):
            try:
                x = float(value)
            except ValueError:
                pass
        if x is None:
            raise _Invalid(path, f"expected a number, got {value!r}")
        if not math.isfinite(x):
            raise _Invalid(path, f"expected a finite number, got {value!r}")
        return x
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid(path, f"expected a string, got {value!r} (quote it in YAML)")
    if tp is Path:
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
        raise _Invalid(path, f"expected a path, got {value!r}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Invalid(path, f"expected {_describe(tp)}, got {value!r} (write [a, b])")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Invalid(path, f"expected {len(args)} items, got {value!r}")
            return tuple(_convert(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(item, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Invalid(path, f"expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, _join(path, str(k))): _convert(vt, v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Invalid(path, f"expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, path)
    raise TypeError(f"{path}: config annotation {tp!r} is not supported by recsparse.config")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _build(cls: type[T], data: Mapping[str, Any], path: str) -> T:
    fields = _fields(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = _join(path, str(unknown[0]))
        raise _Invalid(key, f"unknown key; {path or 'the config'} has {', '.join(sorted(fields))}")
    hints = _hints(cls)
    kw = {k: _convert(hints[k], v, _join(path, k)) for k, v in data.items()}
    try:
        return cls(**kw)
    except _Invalid:
        raise
    except (ValueError, TypeError) as e:  # validate(): range / cross-field rules
        raise _Invalid(path, _prefix(str(e), path)) from None


def _prefix(msg: str, path: str) -> str:
    """``validate()`` messages usually name their dotted field already; otherwise prefix the section."""
    if not path or msg.startswith(path):
        return msg
    return f"{path}: {msg}"


class Config:
    """Base of config dataclasses (decorate the subclass with ``@dataclass``): on construction every field is checked
    against its annotation, then :meth:`validate` runs. Constructing from Python (``TrainerConfig(lr=...)``) and
    loading from YAML go through the same checks."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for name in _fields(type(self)):
            try:
                setattr(self, name, _convert(hints[name], getattr(self, name), name))
            except _Invalid as e:
                raise ConfigError(f"{type(self).__name__}.{e.path}: {e.msg}") from None
        self.validate()

    def validate(self) -> None:
        """Range and cross-field rules; raise ``ValueError`` naming the dotted field."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def build(cls: type[T], data: Mapping[str, Any], *, where: Mapping[str, str] | None = None) -> T:
    """``data`` (nested mappings) -> a validated ``cls``. ``where`` maps dotted keys to where their value came from
    (``"c.yaml:12"``, ``"override x=1"``); the error names the nearest one."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}"
                          + _where_suffix("", where))
    try:
        return _build(cls, data, "")
    except _Invalid as e:
        # a validate() message starts with the dotted field it is about: locate that one
        lead = re.match(r"[A-Za-z_][\w.\[\]]*", e.msg)
        key = lead.group() if lead and lead.group().startswith(e.path) else e.path
        named = e.msg.startswith(e.path) and bool(e.path) or not e.path
        raise ConfigError(f"{'' if named else e.path + ': '}{e.msg}{_where_suffix(key, where)}") from None


def _where_suffix(path: str, where: Mapping[str, str] | None) -> str:
    if not where:
        return ""
    p = re.sub(r"\[\d+\]$", "", path)
    while True:
        if p in where:
            return f" ({where[p]})"
        if not p:
            return ""
        p = p.rpartition(".")[0] if "." in p else ""


def check_value(annotation: Any, value: Any, key: str, source: str | None = None) -> Any:
    """One value checked (and losslessly converted) against ``annotation`` with the rules above; for code that maps
    keys onto fields itself. Raises :class:`ConfigError` ``"KEY: expected ..., got ... (SOURCE)"``."""
    try:
        return _convert(annotation, value, key)
    except _Invalid as e:
        raise ConfigError(f"{e.path}: {e.msg}" + (f" ({source})" if source else "")) from None


def parse_override(override: str) -> tuple[list[str], Any]:
    """``"trainer.lr=1e-3"`` -> (``["trainer", "lr"]``, value parsed as a YAML scalar/flow value)."""
    key, sep, raw = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"override {override!r} must be KEY=VALUE with a dotted KEY (e.g. trainer.max_epochs=3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({_yaml_problem(e)})") from None
    return parts, value


def apply_overrides(d: dict[str, Any], overrides: Sequence[str], where: dict[str, str] | None = None
                    ) -> dict[str, Any]:
    """Apply ``["trainer.max_epochs=3", ...]`` to the nested dict ``d`` in place (types are checked by
    :func:`build`); records each override in ``where``."""
    for ov in overrides:
        parts, value = parse_override(ov)
        node = d
        for i, p in enumerate(parts[:-1]):
            nxt = node.setdefault(p, {})
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {ov!r}: {'.'.join(parts[:i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
        if where is not None:
            where[".".join(parts)] = f"override {ov}"
            for i in range(1, len(parts)):  # an unknown section is reported at its own key
                where.setdefault(".".join(parts[:i]), f"override {ov}")
    return d


def _yaml_problem(e: yaml.YAMLError) -> str:
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return " ".join(str(problem).split())


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a YAML mapping; returns (data, dotted key -> ``"FILE:LINE"``). Malformed YAML, duplicate keys and a
    non-mapping top level raise :class:`ConfigError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path}: cannot read ({e})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        also = f" ({ctx} at line {cmark.line + 1})" if ctx and cmark is not None and cmark is not mark else ""
        raise ConfigError(f"{loc}: malformed YAML: {_yaml_problem(e)}{also}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    where: dict[str, str] = {"": str(path)}
    _lines(node, "", path, where)
    return data, where


def _lines(node: yaml.Node, prefix: str, path: Path, where: dict[str, str]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for k, v in node.value:
        key = str(k.value)
        dotted = _join(prefix, key)
        if key in seen:
            raise ConfigError(f"{path}:{k.start_mark.line + 1}: duplicate key {dotted}")
        seen.add(key)
        where[dotted] = f"{path}:{k.start_mark.line + 1}"
        _lines(v, dotted, path, where)


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
         defaults: Mapping[str, Any] | None = None) -> T:
    """YAML file (optional) + ``defaults`` for keys the file leaves out + overrides -> a validated ``cls``."""
    data: dict[str, Any] = {}
    where: dict[str, str] = {}
    if path is not None:
        data, where = load_yaml(path)
    for k, v in (defaults or {}).items():
        data.setdefault(k, v)
    apply_overrides(data, overrides, where)
    return build(cls, data, where=where)


# A run/output name: one path component, no traversal (``name=../../x`` must not escape the output folder).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]*")


def check_name(field: str, value: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a safe single path component."""
    if not SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{field} must be one folder name (letters, digits, . _ + = @ -; no '/' or '..'), "
                         f"got {value!r}")

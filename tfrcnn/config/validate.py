"""Validation: a plain nested dict (as YAML holds it) → the schema's dataclasses, driven by the field types.

It follows each field's type (`Literal` choices, `Optional`, `Union`, `Tuple`, nested dataclasses), then each
section's `_ranges` and `_checks`; it knows no section by name. Every failure is a `ConfigError` whose message names
the file (or override) that set the value and the dotted key.
"""
import dataclasses
import difflib
import functools
import re
import types
import typing
from typing import Literal, Union


class ConfigError(ValueError):
    """A config that cannot be used; the message starts with `<file or override>: <dotted.key>: `."""


class Origins:
    """Which file (or override) set each dotted key, so that an error points where the value came from."""

    def __init__(self, default, by_key=None):
        self.default = default
        self.by_key = {} if by_key is None else by_key

    def error(self, key, message):
        if not key:
            return ConfigError(f"{self.default}: {message}")
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        for n in range(len(parts), 0, -1):
            source = self.by_key.get(".".join(parts[:n]))
            if source is not None:
                break
        else:
            source = self.default
        return ConfigError(f"{source}: {key}: {message}")


@functools.lru_cache(maxsize=None)
def hints(cls):
    return typing.get_type_hints(cls)


def join(key, name):
    return f"{key}.{name}" if key else str(name)


def did_you_mean(name, candidates):
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(name, known):
    return "unknown key" + (did_you_mean(name, known) or f" (known: {', '.join(known)})")


def scalar(value):
    """A Literal choice as YAML spells it: 'pytorch', false, 50."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def show(value):
    """The value as an error message shows it: its YAML-ish type and a short repr."""
    if value is None:
        return "null"
    kind = {dict: "mapping", list: "list", tuple: "list"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def is_union(tp):
    return typing.get_origin(tp) in (Union, types.UnionType)


def describe(tp):
    """A type as a message names it: int, [float, float], 'linear' or 'constant' or null, mapping, ..."""
    if dataclasses.is_dataclass(tp):
        return "mapping"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if is_union(tp):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is Literal:
        return " or ".join(scalar(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"[{describe(args[0])}, ...]"
        return f"[{', '.join(describe(a) for a in args)}]"
    return tp.__name__


def convert(tp, value, key, origins):
    """`value` (from YAML) checked against type `tp` and converted (lists → tuples, int → float)."""
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, origins)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if is_union(tp):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1 and value is not None:  # Optional[X]: X's own message is the precise one
            return convert(arms[0], value, key, origins)
        for arm in arms:
            try:
                return convert(arm, value, key, origins)
            except ConfigError:
                pass
    elif origin is Literal:
        # Exact type match: YAML's `true` must not pass for 1, nor 1 for `true`.
        if any(type(value) is type(a) and value == a for a in args):
            return value
        kinds = {type(a) for a in args}
        if len(kinds) == 1 and type(value) not in kinds:
            raise origins.error(key, f"expected {next(iter(kinds)).__name__}, got {show(value)}")
        if len(args) == 1:  # a key kept for MMDetection's configs, with the one value tfrcnn implements
            raise origins.error(key, f"only {scalar(args[0])} is implemented, got {show(value)}")
        hint = did_you_mean(value, [a for a in args if isinstance(a, str)]) if isinstance(value, str) else ""
        raise origins.error(key, f"expected one of {', '.join(map(scalar, args))}, got {show(value)}{hint}")
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                args = (args[0],) * len(value)
            if len(args) == len(value):
                return tuple(convert(a, v, f"{key}[{i}]", origins) for i, (a, v) in enumerate(zip(args, value)))
    elif tp is float:
        if type(value) in (int, float):
            return float(value)
    elif tp in (bool, int, str):
        if type(value) is tp:  # bool is an int subclass: `type() is` keeps `true` out of int fields
            return value
    else:
        raise TypeError(f"config field {key}: unsupported annotation {tp!r}")
    raise origins.error(key, f"expected {describe(tp)}, got {show(value)}")


def build(cls, value, key, origins):
    """A plain dict validated into the dataclass `cls`: unknown, missing and mistyped keys are errors."""
    if not isinstance(value, dict):
        raise origins.error(key, f"expected a mapping, got {show(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in value:
        if name in cls._removed:
            raise origins.error(join(key, name), f"not a tfrcnn key: {cls._removed[name]}")
        if name not in fields:
            raise origins.error(join(key, name), unknown_key(name, list(fields)))
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = convert(hints(cls)[name], value[name], join(key, name), origins)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise origins.error(join(key, name), "required key is missing")
    obj = cls(**kwargs)
    for name, rule in cls._ranges.items():
        value = getattr(obj, name)
        if value is not None and not all(in_range(v, rule) for v in flatten((value,))):
            raise origins.error(join(key, name), f"must be {rule}, got {show(value)}")
    for name, message in obj._checks():
        raise origins.error(join(key, name), message)
    return obj


def in_range(value, rule):
    """Whether a number satisfies a `_ranges` rule: "-1 or <rule>", ">= a", "> a", or an interval "[a, b)"."""
    if rule.startswith("-1 or "):
        return value == -1 or in_range(value, rule[len("-1 or "):])
    if rule[0] in "[(":
        lo, hi = (float(x) for x in rule[1:-1].split(","))
        return (lo <= value if rule[0] == "[" else lo < value) and (value <= hi if rule[-1] == "]" else value < hi)
    op, bound = rule.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def flatten(values):
    for v in values:
        yield from (flatten(v) if isinstance(v, tuple) else (v,))


def plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


"""YAML config files: `_base_` inheritance, `_delete_`, `--params_override` strings, and the resolved dump.

`load_config` reads a file, merges its `_base_` files the way MMDetection's `Config` does, applies overrides
(`a.b=c,d.e=f`) and validates the result against `tfrcnn.config.schema`.
"""
import copy
import dataclasses
import os
import re
import typing

import yaml

from tfrcnn.config import validate
from tfrcnn.config.schema import Config
from tfrcnn.config.validate import ConfigError, join, show, unknown_key

OVERRIDE_SOURCE = "--params_override"
CONFIG_NAME = "config.yaml"  # the resolved config beside a run's checkpoints and inside an export


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that reads `1e-5` as a float (YAML 1.1 wants `1.0e-5`) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class _Dumper(yaml.SafeDumper):
    """Lists in flow style (`[4, 8, 16]`), mappings in block style."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {show(tree)}")
    return tree


def _merge(base, child, source, origins, prefix=""):
    """`child` merged onto `base` (new dicts): dicts merge recursively, other values replace.

    A dict in `child` with `_delete_: true` replaces the inherited dict instead. Each key `child` sets is
    recorded in `origins` (dotted key → `source`) when `origins` is given.
    """
    out = dict(base)
    for name, value in child.items():
        key = join(prefix, name)
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop("_delete_", False)
            if not isinstance(delete, bool):
                raise ConfigError(f"{source}: {key}._delete_: expected bool, got {show(delete)}")
            inherited = out.get(name) if isinstance(out.get(name), dict) and not delete else {}
            value = _merge(inherited, value, source, origins, key)
        out[name] = value
        if origins is not None:
            origins[key] = source
    return out


def _load_tree(path, chain, origins):
    """The merged dict of `path` and its `_base_` files; `chain` lists the files that include this one."""
    chain = chain + [path]
    tree = _read_yaml(path)
    bases = tree.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_: expected a path or a list of paths, got {show(bases)}")
    merged = {}
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: _base_ file not found: {os.path.abspath(base_path)}")
        reals = [os.path.realpath(p) for p in chain]
        if os.path.realpath(base_path) in reals:
            cycle = chain[reals.index(os.path.realpath(base_path)):] + [base_path]
            raise ConfigError(f"{path}: _base_ cycle: {' -> '.join(cycle)}")
        # Bases load (and record origins) in merge order, so the last writer of a key is its origin.
        merged = _merge(merged, _load_tree(base_path, chain, origins), path, None)
    return _merge(merged, tree, path, origins)


def _split_overrides(text, source=OVERRIDE_SOURCE):
    """Splits `a=1,b=[1, 2],c='x,y'` at the commas outside brackets and quoted scalars.

    As in YAML, a quote opens a quoted scalar only where a scalar starts (after `=`, a bracket, a comma, a colon
    or a space): in `classes=[box,o'ring],b=2` the apostrophe is part of `o'ring` and `b=2` is its own override.
    """
    items, depth, quote, start, previous = [], 0, None, 0, "="
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"" and previous in "=[{(,: ":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
        previous = ch
    if quote:
        raise ConfigError(f"{source}: {text[start:].strip()!r}: the quote {quote} opened here is never closed")
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _section_type(tp):
    """The dataclass behind a field type (`X` or `Optional[X]`), or None for a leaf."""
    if dataclasses.is_dataclass(tp):
        return tp
    if validate.is_union(tp):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if len(inner) == 1 else None
    return None


def apply_overrides(tree, overrides, source=OVERRIDE_SOURCE, schema=Config, origins=None):
    """A copy of the dict `tree` with `overrides` applied.

    Args:
      tree: nested dict, e.g. a YAML file with its `_base_` merged.
      overrides: `a.b=c,d.e=f` (or a list of such strings). Values are YAML (`0.5`, `true`, `null`,
        `[1333, 800]`, `{max_norm: 35}`, strings); commas inside brackets or quotes do not split.
        A mapping value merges into the existing section, as a `_base_` child would.
      source: names the overrides in error messages.
      schema: the dataclass the keys must exist in; an unknown key is a ConfigError naming it.
      origins: optional dict (dotted key → source) updated with the keys set here.
    """
    tree = copy.deepcopy(tree)
    if not isinstance(overrides, str):
        for item in overrides:
            tree = apply_overrides(tree, item, source, schema, origins)
        return tree
    for item in _split_overrides(overrides, source):
        dotted, eq, text = item.partition("=")
        dotted = dotted.strip()
        if not eq or not dotted:
            raise ConfigError(f"{source}: {item!r}: expected key=value")
        try:
            value = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: {dotted}: value {text!r} is not valid YAML: {e}") from None
        node, cls, parts = tree, schema, dotted.split(".")
        for i, name in enumerate(parts):
            key = ".".join(parts[: i + 1])
            if cls is None:
                raise ConfigError(f"{source}: {key}: unknown key ({'.'.join(parts[:i])} is a value, not a section)")
            hints = validate.hints(cls)
            if name in cls._removed:
                raise ConfigError(f"{source}: {key}: not a tfrcnn key: {cls._removed[name]}")
            if name not in hints:
                raise ConfigError(f"{source}: {key}: {unknown_key(name, list(hints))}")
            if i == len(parts) - 1:
                if isinstance(value, dict):
                    value = _merge(node.get(name) if isinstance(node.get(name), dict) else {}, value, source,
                                   origins, key)
                node[name] = value
                if origins is not None:
                    origins[key] = source
            else:
                cls = _section_type(hints[name])
                if not isinstance(node.get(name), dict):
                    node[name] = {}  # e.g. a null optional section (grad_clip) that the override fills in
                    if origins is not None:
                        origins[key] = source
                node = node[name]
    return tree


def load_config(path, overrides=None):
    """Reads the YAML config at `path`, resolves `_base_`, applies `overrides` and validates.

    Args:
      path: a YAML file; its `_base_` (a path or list of paths, relative to the file) merge first, left
        to right, then the file itself. A list of files merges them in order, each (with its bases) onto
        the previous ones, as repeated `--config_file` flags do.
      overrides: optional `a.b=c,d.e=f` string (or list of them), as `--params_override` takes.
    Returns:
      The `Config`. Raises `ConfigError` naming the file (or override) and dotted key of any problem.
    """
    paths = [os.fspath(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if not paths:
        raise ConfigError("no config file given")
    by_key, tree = {}, {}
    for p in paths:
        if not os.path.isfile(p):
            raise ConfigError(f"{p}: config file not found: {os.path.abspath(p)}")
        layer_keys = {}
        layer = _load_tree(p, [], layer_keys)
        tree = _merge(tree, layer, p, by_key) if tree else layer
        by_key.update(layer_keys)
    if overrides:
        tree = apply_overrides(tree, overrides, origins=by_key)
    return validate.build(Config, tree, "", validate.Origins(paths[-1], by_key))


def dump_config(cfg):
    """The resolved config as YAML text; `load_config` of it gives back an equal `Config`."""
    header = "# Resolved tfrcnn config: every value the run used, base files merged in.\n"
    return header + yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=110)


def save_config(cfg, path):
    """Writes `dump_config(cfg)` to `path` (e.g. next to the checkpoints), creating its directory."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_config(cfg))

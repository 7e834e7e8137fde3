"""The config system: fvcore's ``CfgNode`` with strict, helpful merging.

* YAML files may inherit with ``_BASE_: relative/or/absolute.yaml`` (resolved by fvcore).
* ``KEY VALUE`` pairs from the command line are parsed as Python literals when possible.
* An unknown key is an error that names the key and the closest valid keys; a value of the wrong
  type is an error that names the key, the expected type and the given type.
"""
from __future__ import annotations

import ast
import difflib
import os
from typing import Any, Iterable, List, Optional, Sequence

from fvcore.common.config import CfgNode as _FvCfgNode

__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_config"]


class ConfigError(ValueError):
    """A config file or command-line override that cannot be applied."""


class CfgNode(_FvCfgNode):
    """A ``CfgNode`` whose merges reject unknown keys and type mismatches with clear messages."""

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if not os.path.isfile(cfg_filename):
            raise ConfigError(f"config file not found: {cfg_filename}")
        try:
            loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        except Exception as e:  # yaml syntax errors, missing _BASE_ files
            raise ConfigError(f"{cfg_filename}: cannot be read as a detres config: {e}") from e
        if loaded is None:
            return
        if not isinstance(loaded, dict):
            raise ConfigError(f"{cfg_filename}: top level must be a mapping, got {type(loaded).__name__}")
        self._merge_checked(loaded, prefix="", source=cfg_filename)

    def merge_from_list(self, cfg_list: Sequence[str]) -> None:
        if len(cfg_list) % 2 != 0:
            raise ConfigError(
                f"command-line overrides must be KEY VALUE pairs, got an odd number of items: {list(cfg_list)}"
            )
        for key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            self._set_checked(key, _parse_literal(raw), source="command line")

    def merge_from_dict(self, values: dict, source: str = "overrides") -> None:
        """Merge a nested dict (e.g. from Python code) with the same checks as a file."""
        self._merge_checked(values, prefix="", source=source)

    # ------------------------------------------------------------------ internals
    def _merge_checked(self, values: dict, prefix: str, source: str) -> None:
        for key, value in values.items():
            if key == "_BASE_":
                continue
            full_key = f"{prefix}{key}"
            if isinstance(value, dict):
                node = self._node_for(full_key, source)
                if not isinstance(node, _FvCfgNode):
                    self._set_checked(full_key, value, source)
                    continue
                self._merge_checked(value, prefix=full_key + ".", source=source)
            else:
                self._set_checked(full_key, value, source)

    def _node_for(self, full_key: str, source: str) -> Any:
        node: Any = self
        for part in full_key.split("."):
            if not isinstance(node, _FvCfgNode) or part not in node:
                raise ConfigError(_unknown_key_message(self, full_key, source))
            node = node[part]
        return node

    def _set_checked(self, full_key: str, value: Any, source: str) -> None:
        parts = full_key.split(".")
        parent = self._node_for(".".join(parts[:-1]), source) if len(parts) > 1 else self
        if not isinstance(parent, _FvCfgNode) or parts[-1] not in parent:
            raise ConfigError(_unknown_key_message(self, full_key, source))
        old = parent[parts[-1]]
        if isinstance(old, _FvCfgNode):
            raise ConfigError(f"{source}: '{full_key}' is a group of keys, not a value; set its sub-keys")
        was_frozen = parent.is_frozen()
        parent.defrost()
        parent[parts[-1]] = _coerce(old, value, full_key, source)
        if was_frozen:
            parent.freeze()


def _all_keys(node: _FvCfgNode, prefix: str = "") -> List[str]:
    keys: List[str] = []
    for k, v in node.items():
        keys.append(prefix + k)
        if isinstance(v, _FvCfgNode):
            keys.extend(_all_keys(v, prefix + k + "."))
    return keys


def _unknown_key_message(root: _FvCfgNode, full_key: str, source: str) -> str:
    candidates = _all_keys(root)
    close = difflib.get_close_matches(full_key, candidates, n=3, cutoff=0.6)
    leaf = full_key.split(".")[-1]
    close += [k for k in candidates if k.split(".")[-1] == leaf and k not in close][:3]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"{source}: unknown config key '{full_key}'.{hint}"


def _parse_literal(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        lowered = raw.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return raw


def _coerce(old: Any, new: Any, full_key: str, source: str) -> Any:
    if old is None:
        return new
    if isinstance(old, bool) or isinstance(new, bool):
        if isinstance(old, bool) and isinstance(new, bool):
            return new
    elif isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return type(old)(new)
    elif isinstance(old, (list, tuple)) and isinstance(new, (int, float, str)) and not isinstance(new, bool):
        # a single value where a sequence is expected: ``INPUT.MIN_SIZE_TRAIN 800``
        if not old or isinstance(old[0], type(new)):
            return type(old)([new])
    elif type(old) is type(new):
        return new
    raise ConfigError(
        f"{source}: config key '{full_key}' expects {type(old).__name__} (default {old!r}), "
        f"got {type(new).__name__} ({new!r})"
    )


def get_cfg() -> CfgNode:
    """A fresh copy of the default config."""
    from detres.config.defaults import _C

    return _C.clone()


def load_config(config_file: Optional[str] = None, opts: Iterable[str] = ()) -> CfgNode:
    """Defaults, then ``config_file`` (with ``_BASE_`` inheritance), then ``KEY VALUE`` overrides."""
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg

"""Spec errors as the user wrote the file: pydantic's locations and messages rewritten to
``<file>: <yaml.path>: <what is wrong> (got <value>); allowed: <values>``."""

from __future__ import annotations

import json
import re
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from ..errors import SpecError
from .study import Study


@dataclass
class Problem:
    """One thing wrong with a spec, located by its YAML path."""

    path: str
    what: str
    got: Any = field(default=None)
    has_got: bool = False
    allowed: list[str] | None = None

    def format(self, source: str) -> str:
        line = f"{source}: {self.path or '<top level>'}: {self.what}"
        if self.has_got:
            line += f" (got {_show(self.got)})"
        if self.allowed:
            line += f"; allowed: {', '.join(self.allowed)}"
        return line


def _show(v: Any) -> str:
    text = repr(v) if not isinstance(v, (dict, list)) else json.dumps(v, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _fmt_path(parts: list) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _yaml_path(loc: tuple, data: Any, error_type: str) -> list:
    """Turn pydantic's loc into the path the user wrote.

    pydantic inserts union tags (``range``, ``teacher``) and ``[key]`` markers that are
    not in the file; walking the input alongside keeps only real keys and indices.
    """
    parts, node = [], data
    for i, item in enumerate(loc):
        if isinstance(node, dict) and item in node:
            parts.append(item if isinstance(item, str) else str(item))  # a key, even if numeric
            node = node[item]
        elif isinstance(node, (list, tuple)) and isinstance(item, int) and 0 <= item < len(node):
            parts.append(item)
            node = node[item]
        elif i == len(loc) - 1 and error_type == "missing":
            parts.append(item)
    return parts


def _concrete(tp: Any, node: Any) -> Any:
    """Strip Annotated/Optional and pick the union member the input node is meant for."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [_concrete(a, node) for a in get_args(tp) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if isinstance(node, dict) and models:
                for m in models:
                    for disc in ("kind", "type"):
                        f = m.model_fields.get(disc)
                        if f is not None and node.get(disc) in get_args(f.annotation):
                            return m
                return models[0]
            lists = [m for m in members if get_origin(m) is list]
            if isinstance(node, list) and lists:
                return lists[0]
            return members[0] if members else None
        else:
            return tp


def _type_at(parts: list, data: Any, resolve: bool = True) -> Any:
    """The declared type at a YAML path (to list allowed keys or literal values)."""
    tp, node = Study, data
    for item in parts:
        tp = _concrete(tp, node)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            f = tp.model_fields.get(item)
            if f is None:
                return None
            tp = f.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            return None
        try:
            node = node[item]
        except (KeyError, IndexError, TypeError):
            node = None
    return _concrete(tp, node) if resolve else tp


def _union_tags(tp: Any, disc: str) -> list[str]:
    """Values of the discriminator field across a (possibly Annotated) union's models."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    tags = []
    for member in get_args(tp):
        f = getattr(member, "model_fields", {}).get(disc)
        if f is not None:
            tags += [str(a) for a in get_args(f.annotation)]
    return tags


def _yaml_literal(v: Any) -> str:
    return {True: "true", False: "false"}.get(v, str(v)) if isinstance(v, bool) else str(v)


def _quoted(expected: str) -> list[str]:
    """Values out of pydantic's "'a', 'b' or True" strings."""
    return [a or _yaml_literal(b == "True") for a, b in re.findall(r"'([^']*)'|\b(True|False)\b", expected)]


def problem_from_error(err: dict, data: Any) -> Problem:
    kind, ctx = err["type"], err.get("ctx") or {}
    parts = _yaml_path(err["loc"], data, kind)
    p = Problem(_fmt_path(parts), err["msg"], err.get("input"), True)
    if kind == "missing":
        p.what, p.has_got = "required key is missing", False
        tp = _type_at(parts, data)
        if get_origin(tp) is Literal:
            p.allowed = [_yaml_literal(a) for a in get_args(tp)]
    elif kind == "extra_forbidden":
        p.what = "unknown key"
        parent = _concrete(_type_at(parts[:-1], data), None) if parts[:-1] else Study
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            p.allowed = list(parent.model_fields)
    elif kind in ("literal_error", "enum"):
        p.what = "invalid value"
        p.allowed = _quoted(str(ctx.get("expected", "")))
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        disc = str(ctx.get("discriminator", "")).strip("'")
        p.path = _fmt_path([*parts, disc])
        p.allowed = _quoted(str(ctx.get("expected_tags", ""))) or _union_tags(_type_at(parts, data, False), disc)
        if kind == "union_tag_invalid":
            p.what, p.got = f"unknown {disc}", ctx.get("tag")
        else:
            p.what, p.has_got = "required key is missing", False
    elif kind == "dlor":
        p.what, p.allowed = ctx["msg"], ctx.get("allowed")
    elif kind == "value_error":
        p.what = err["msg"].removeprefix("Value error, ")
    return p


def spec_error(source: str, problems: list[Problem]) -> SpecError:
    lines = list(dict.fromkeys(p.format(source) for p in problems))
    header = f"{source}: {len(lines)} problem{'s' if len(lines) != 1 else ''} in study spec"
    err = SpecError("\n".join([header, *lines]))
    err.problems = problems  # structured, for the CLI and tests
    return err

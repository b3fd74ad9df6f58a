"""Reading a study file: bounded YAML (size, nodes, depth, aliases, duplicate keys), then
validation (`parse_study`)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import SpecError
from .checks import cross_check
from .problems import problem_from_error, spec_error
from .study import Study


#: Limits on a spec file, checked before it can cost memory or time (a study spec is a
#: few KB; anything near these is an accident or an attack, e.g. "billion laughs").
MAX_SPEC_BYTES = 1_000_000
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 50
_KEY_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "merge")}


class _YamlLimit(yaml.MarkedYAMLError):
    """A spec YAML that is too big, too deep, self-referential or has odd keys."""


def _check_yaml_graph(root: yaml.Node) -> None:
    """Walk the composed node graph as construction would *expand* it (aliases count
    every time they are used), refusing past `MAX_YAML_NODES` nodes, deeper than
    `MAX_YAML_DEPTH`, a node that contains itself, or a key that is not a plain scalar.

    PyYAML shares aliased nodes, so a bomb composes cheaply but explodes later in
    validation and hashing; counting the expanded tree stops it here, in microseconds.
    """
    count = 0

    def walk(node, depth, ancestors):
        nonlocal count
        count += 1
        if count > MAX_YAML_NODES:
            raise _YamlLimit(problem=f"more than {MAX_YAML_NODES:,} YAML nodes after alias expansion "
                             "(limit MAX_YAML_NODES; an alias bomb?)", problem_mark=node.start_mark)
        if depth > MAX_YAML_DEPTH:
            raise _YamlLimit(problem=f"nested deeper than {MAX_YAML_DEPTH} levels (limit MAX_YAML_DEPTH)",
                             problem_mark=node.start_mark)
        if isinstance(node, yaml.ScalarNode):
            return
        if id(node) in ancestors:
            raise _YamlLimit(problem="self-referential YAML (an anchor used inside itself)",
                             problem_mark=node.start_mark)
        ancestors.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag not in _KEY_TAGS:
                    raise _YamlLimit(problem=f"mapping keys must be plain names (got a {k.tag.rsplit(':', 1)[-1]} key)",
                                     problem_mark=k.start_mark)
                walk(k, depth + 1, ancestors)
                walk(v, depth + 1, ancestors)
        else:
            for v in node.value:
                walk(v, depth + 1, ancestors)
        ancestors.discard(id(node))

    walk(root, 0, set())


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one,
    so a second ``dense:`` family would quietly replace the first)."""

    _depth = 0
    _composed = 0

    def compose_node(self, parent, index):
        """Bounded nesting and size while composing (PyYAML recurses: 20,000 ``[`` →
        RecursionError; and composing 100,000 nodes costs seconds before any check could
        run, so the count stops at `MAX_YAML_NODES` as they are built)."""
        self._depth += 1
        self._composed += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlLimit(problem=f"nested deeper than {MAX_YAML_DEPTH} levels (limit MAX_YAML_DEPTH)",
                                 problem_mark=self.peek_event().start_mark)
            if self._composed > MAX_YAML_NODES:
                raise _YamlLimit(problem=f"more than {MAX_YAML_NODES:,} YAML nodes (limit MAX_YAML_NODES)",
                                 problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            _check_yaml_graph(node)
        return node

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # unhashable key: the base constructor reports it
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"duplicate key {key!r} (first defined on line {first + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_study(data: dict, source: str = "<memory>", base_dir: str | Path | None = None) -> Study:
    """Validate an already-parsed mapping; raises SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: <top level>: a study must be a mapping of settings "
                        f"(got {type(data).__name__})")
    try:
        study = Study.model_validate(data)
    except ValidationError as e:
        raise spec_error(source, [problem_from_error(err, data) for err in e.errors(include_url=False)]) from None
    problems = cross_check(study, data)
    if problems:
        raise spec_error(source, problems)
    study._source = source
    study._base_dir = Path(base_dir) if base_dir is not None else Path(source).parent
    return study


def _read_spec_text(p: Path) -> str:
    """The file's text, refusing anything but a regular file of at most `MAX_SPEC_BYTES`
    (stat first, then read at most limit+1 bytes: a FIFO, ``/dev/zero`` or a 50 MB file
    must fail at once, not hang or fill memory)."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise SpecError(f"{p}: study file not found") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{p}: cannot read study file: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise SpecError(f"{p}: a study file must be a regular file ({what})")
    if st.st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{p}: study file is {st.st_size:,} bytes (limit MAX_SPEC_BYTES = {MAX_SPEC_BYTES:,})")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped since the stat
                raise SpecError(f"{p}: a study file must be a regular file")
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{p}: cannot read study file: {e}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"{p}: study file exceeds {MAX_SPEC_BYTES:,} bytes (limit MAX_SPEC_BYTES)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p}: cannot read study file: not UTF-8 text ({e})") from None


def load_study(path: str | Path) -> Study:
    """Read, parse and validate a study YAML file."""
    p = Path(path)
    text = _read_spec_text(p)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise SpecError(f"{p}{where}: invalid YAML (line {mark.line + 1 if mark else '?'}): "
                        f"{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError(f"{p}: <top level>: a study must be a mapping of settings (got {got})")
    return parse_study(data, str(p), base_dir=p.parent)

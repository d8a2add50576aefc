"""Files the user names (``--athos-gates``, ``--athos-baseline``, ``--athos-scenario``): read, decoded
and parsed in one place.

Every way such a file can be wrong before its own fields are looked at (missing, unreadable, a
directory, too large, not UTF-8 text: a binary file, not JSON or YAML, nested deeper than a parser
goes) becomes the caller's own error type (``GatesError``, ``BaselineError``, ``ScenarioError``:
each a ``ValueError`` the start-up turns into one line and exit code 2), whose message names the
file and what was wrong, on one line. The checks of each file's fields stay with its module and
raise the same type. Paths in messages and reports go through :func:`shown`: a path on Linux is
bytes, and one that is not UTF-8 would otherwise reach a message or a report as a lone surrogate
that cannot be written.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

MAX_BYTES = 64 * 1024 * 1024  # a day's soak summary is a few MB; more is not one of this tool's files


def shown(path: str | bytes | os.PathLike[str]) -> str:
    """``path`` for a message or a report: bytes that are not UTF-8 escaped (``\\xff``)."""
    raw = os.fspath(path)
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8", "surrogateescape")  # back to the bytes the command line had
        except UnicodeEncodeError:  # a surrogate no byte decodes to: escape it as it is
            return raw.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def read_text(path: str | os.PathLike[str], error: type[ValueError]) -> str:
    """The file's text, or ``error("FILE: what was wrong")``."""
    name = shown(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{name}: file not found") from None
    except OSError as exc:
        raise error(f"{name}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_BYTES:
        raise error(f"{name}: larger than {MAX_BYTES >> 20} MiB: not a file this tool reads")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): a binary file?"
        ) from None


def read_json(path: str | os.PathLike[str], error: type[ValueError]) -> Any:
    """The file's JSON value, or ``error``."""
    text = read_text(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{shown(path)}: not JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise error(f"{shown(path)}: not JSON this tool reads (nested too deeply)") from None


def read_yaml(path: str | os.PathLike[str], error: type[ValueError], *, nodes: bool = False) -> Any:
    """The file's YAML document (None when empty), or ``error``. ``nodes``: the composed node tree,
    whose marks give each value's line; otherwise plain values, duplicate keys refused."""
    text = read_text(path, error)
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader) if nodes else yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise error(f"{shown(path)}: {where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise error(f"{shown(path)}: (document): invalid YAML: nested too deeply") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML keeps the last one silently (a scenario would
    lose turns without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # SafeLoader's own check refuses an unhashable key, with its line
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

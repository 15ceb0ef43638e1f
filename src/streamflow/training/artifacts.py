"""Model files that are the same bytes for the same fitted model, so a sha256 identifies a model.

``skops.io.dumps`` (0.16) is not reproducible: every node's ``__id__`` in ``schema.json`` is the
CPython ``id()`` of the object it saved, arrays are stored as ``<id>.npy`` (bytes as
``<uuid4>.bin``), and each zip member carries the wall-clock time it was written. :func:`skops_bytes`
rewrites that archive canonically, changing no content: ids are renumbered from 1 in the order
``schema.json`` lists them (skops reads ``__id__`` only as an opaque key that marks one object met
twice, and skips id 0), member files are renamed after their node, and every member gets a fixed
timestamp. The result loads with ``skops.io.load`` like the original.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import zipfile
from collections.abc import Iterator
from typing import Any

# The zip epoch: a member's time is part of the archive's bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_SCHEMA = "schema.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def skops_bytes(obj: Any) -> bytes:
    """``obj`` in the skops format, the same bytes for the same object in any process."""
    import skops.io

    return canonical_skops(skops.io.dumps(obj))


def canonical_skops(data: bytes) -> bytes:
    """A skops archive rewritten with stable ids, member names and timestamps (see the module doc)."""
    with zipfile.ZipFile(io.BytesIO(data)) as source:
        schema = json.loads(source.read(_SCHEMA))
        members = {info.filename: (info, source.read(info)) for info in source.infolist()}
    number = itertools.count(1)
    ids: dict[int, int] = {}
    names: dict[str, str] = {}
    for node in _nodes(schema):
        old = node.get("__id__")
        if isinstance(old, int) and not isinstance(old, bool):
            if node.get("is_json"):
                # An immutable JSON value (str, int, float...): whether two equal ones were one object
                # depends on interning and caches, not on the model. Each occurrence stands alone.
                node["__id__"] = next(number)
            else:
                if old not in ids:
                    ids[old] = next(number)
                node["__id__"] = ids[old]
        file = node.get("file")
        if isinstance(file, str) and file in members and file != _SCHEMA and file not in names:
            suffix = file[file.rfind(".") :] if "." in file else ""
            names[file] = f"{node.get('__id__', f'file{len(names)}')}{suffix}"
        if isinstance(file, str) and file in names:
            node["file"] = names[file]
    unnamed = set(members) - set(names) - {_SCHEMA}
    if unnamed:  # a member no node points to: an archive this code does not understand
        raise ValueError(f"skops archive has members no node refers to: {sorted(unnamed)[:5]}")

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for old_name, new_name in names.items():
            info, content = members[old_name]
            target.writestr(_member(new_name, info.compress_type), content)
        # As skops writes it: indented JSON, last.
        target.writestr(_member(_SCHEMA, members[_SCHEMA][0].compress_type), json.dumps(schema, indent=2))
    return out.getvalue()


def _member(name: str, compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = compress_type
    info.external_attr = 0o600 << 16  # what ZipFile.writestr gives a name (-rw-------)
    return info


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every dict of a JSON document, depth first, in document order."""
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _nodes(child)
    elif isinstance(value, list):
        for child in value:
            yield from _nodes(child)

"""Typed records between layers: the one check of a record's fields against a dict, and the
generic exact dict round trip of records made of JSON values and nested records.

A file written by an older or another version fails here with the field it lacks (or has
extra) and where it was read from, never as a silent NaN further on. Standard library only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


def check_fields(cls: type, data: Any, source: str,
                 optional: Iterable[str] | None = None) -> None:
    """ValueError unless `data` is a mapping holding every field of the dataclass `cls` that is
    not optional, and no other key. `optional`: the fields a dict may lack (default: those with
    a default value); `source` names the file or message the dict came from."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object for {cls.__name__}, got "
                         f"{type(data).__name__}")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    if optional is None:
        optional = [f.name for f in fields if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING]
    missing = [name for name in names if name not in data and name not in set(optional)]
    if missing:
        raise ValueError(f"{source}: missing field {missing[0]!r} of {cls.__name__} (written by "
                         f"an older or foreign version?); its fields: {', '.join(names)}")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{source}: unknown field {unknown[0]!r} of {cls.__name__}; its "
                         f"fields: {', '.join(names)}")


def record_from_dict(cls: type, data: Any, source: str) -> Any:
    """`cls(**data)` after `check_fields`; nested records (and lists of them) by the `RECORDS`
    mapping of `cls` (field name -> record class)."""
    check_fields(cls, data, source)
    nested = getattr(cls, "RECORDS", {})
    kwargs = {}
    for name, value in data.items():
        record = nested.get(name)
        if record is None or value is None:
            kwargs[name] = value
        elif isinstance(value, list):
            kwargs[name] = [record_from_dict(record, item, f"{source} {name}") for item in value]
        else:
            kwargs[name] = record_from_dict(record, value, f"{source} {name}")
    return cls(**kwargs)


def record_to_dict(record: Any) -> dict[str, Any]:
    """Fields in order; optional fields left at None are left out (as the file had them)."""
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is None and f.default is None:
            continue
        if dataclasses.is_dataclass(value):
            value = record_to_dict(value)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            value = [record_to_dict(item) for item in value]
        out[f.name] = value
    return out

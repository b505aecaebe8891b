"""Domain values → protobuf messages, mechanically.

Dataclass fields map to proto fields of the same name: ``None`` leaves a
field unset, ``datetime`` becomes a ``Timestamp`` (naive = UTC, as Prisma
stores it), JSON values become ``Struct``/``Value``, a string or Python enum
member becomes the proto enum value with the enum's prefix
(``"PRODUCTION"`` → ``ENVIRONMENT_TYPE_PRODUCTION``). A value the proto enum
does not know maps to its ``*_UNSPECIFIED`` zero rather than failing the call.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

_TIMESTAMP = "google.protobuf.Timestamp"
_VALUE = "google.protobuf.Value"
_STRUCT = "google.protobuf.Struct"


@lru_cache(maxsize=None)
def enum_prefix(enum_type: EnumDescriptor) -> str:
    """``EnvironmentType`` → ``ENVIRONMENT_TYPE_``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.name).upper() + "_"


def enum_number(enum_type: EnumDescriptor, value: Any) -> int:
    name = value.name if isinstance(value, enum.Enum) else str(value)
    found = enum_type.values_by_name.get(enum_prefix(enum_type) + name)
    return found.number if found is not None else 0


def enum_name(enum_type: EnumDescriptor, number: int) -> str | None:
    """The domain name of a proto enum number (``ENVIRONMENT_TYPE_STAGING``
    → ``"STAGING"``); ``None`` for the zero value; raises ValueError for a
    number the enum does not define."""
    found = enum_type.values_by_number.get(number)
    if found is None:
        raise ValueError(f"{number} is not a value of {enum_type.name}")
    if number == 0:
        return None
    return found.name[len(enum_prefix(enum_type)):]


def fill(message: M, value: Any) -> M:
    """Copy the dataclass ``value`` into ``message`` (in place) and return it."""
    fields_by_name = message.DESCRIPTOR.fields_by_name
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        fd = fields_by_name.get(f.name)
        if v is None or fd is None:
            continue
        _set(message, fd, v)
    return message


def _set(message: Message, fd: FieldDescriptor, v: Any) -> None:
    name = fd.name
    repeated = fd.is_repeated
    if fd.message_type is not None:
        full_name = fd.message_type.full_name
        if full_name == _TIMESTAMP:
            assert isinstance(v, datetime)
            getattr(message, name).FromDatetime(v)
        elif full_name in (_VALUE, _STRUCT):
            json_format.ParseDict(v, getattr(message, name))
        elif repeated:
            container = getattr(message, name)
            for item in v:
                fill(container.add(), item)
        else:
            fill(getattr(message, name), v)
    elif fd.enum_type is not None:
        if repeated:
            getattr(message, name).extend(enum_number(fd.enum_type, item) for item in v)
        else:
            setattr(message, name, enum_number(fd.enum_type, v))
    elif repeated:
        getattr(message, name).extend(v)
    else:
        setattr(message, name, v)


class RenderedCache:
    """Messages rendered from cached values, reused while the value is.

    Cached answers are immutable objects that live as long as their cache
    entry, so the message rendered from one can be reused for every call
    that gets the same object — a cache hit then costs no rendering. Keyed
    by identity and holding the value itself, so an id is never reused
    while its entry is here. Bounded: cleared when it outgrows ``limit``
    (the next calls simply render again). Callers must not mutate the
    messages they get.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._entries: dict[int, tuple[Any, Message]] = {}

    def get(self, value: Any, render: Callable[[Any], M]) -> M:
        entry = self._entries.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]  # type: ignore[return-value]
        message = render(value)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[id(value)] = (value, message)
        return message

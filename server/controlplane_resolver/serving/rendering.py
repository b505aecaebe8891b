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
from datetime import datetime, timezone
from functools import cache
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp

M = TypeVar("M", bound=Message)

_TIMESTAMP = "google.protobuf.Timestamp"
_VALUE = "google.protobuf.Value"
_STRUCT = "google.protobuf.Struct"


@cache
def enum_prefix(enum_type: EnumDescriptor) -> str:
    """``EnvironmentType`` → ``ENVIRONMENT_TYPE_``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type.name).upper() + "_"


class UnknownEnumValue(ValueError):
    """A request carried an enum number its enum does not define."""


def enum_name(enum_type: EnumDescriptor, number: int) -> str | None:
    """The domain name of a proto enum number (``ENVIRONMENT_TYPE_STAGING``
    → ``"STAGING"``); ``None`` for the zero value; raises
    :class:`UnknownEnumValue` for a number the enum does not define."""
    try:
        return _domain_names(enum_type)[number]
    except KeyError:
        raise UnknownEnumValue(f"{number} is not a value of {enum_type.name}") from None


@cache
def _domain_names(enum_type: EnumDescriptor) -> dict[int, str | None]:
    """Every number ``enum_type`` defines → its domain name (``None`` for
    the zero value)."""
    prefix = len(enum_prefix(enum_type))
    return {
        number: None if number == 0 else value.name[prefix:]
        for number, value in enum_type.values_by_number.items()
    }


def fill(message: M, value: Any) -> M:
    """Copy the dataclass ``value`` into ``message`` (in place) and return it."""
    message.MergeFrom(render(type(message), value))
    return message


def render(message_type: type[M], value: Any) -> M:
    """A new ``message_type`` message holding the dataclass ``value``.

    Runs a per-(value type, message type) plan computed once, and builds the
    message with one constructor call, which on the hot paths (runs,
    environments) costs much less than setting fields one by one.
    """
    kwargs: dict[str, Any] = {}
    for name, kind, aux in _plan(type(value), message_type):  # type: ignore[arg-type]
        v = getattr(value, name)
        if v is None:
            continue
        if kind is _SCALAR:
            kwargs[name] = v
        elif kind is _ENUM:
            kwargs[name] = aux.get(v.name if isinstance(v, enum.Enum) else v, 0)
        elif kind is _TIMESTAMP_KIND:
            kwargs[name] = _timestamp(v)
        elif kind is _MESSAGE:
            kwargs[name] = render(aux, v)
        elif kind is _REPEATED_MESSAGE:
            kwargs[name] = [render(aux, item) for item in v]
        elif kind is _REPEATED_SCALAR:
            kwargs[name] = list(v)
        elif kind is _REPEATED_ENUM:
            kwargs[name] = [aux.get(i.name if isinstance(i, enum.Enum) else i, 0) for i in v]
        else:  # JSON → Struct / Value
            kwargs[name] = json_format.ParseDict(v, aux())
    return message_type(**kwargs)


(
    _SCALAR,
    _ENUM,
    _TIMESTAMP_KIND,
    _MESSAGE,
    _REPEATED_MESSAGE,
    _REPEATED_SCALAR,
    _REPEATED_ENUM,
    _JSON,
) = (object() for _ in range(8))

_EPOCH = datetime(1970, 1, 1)


def _timestamp(v: datetime) -> Timestamp:
    if v.tzinfo is not None:
        v = v.astimezone(timezone.utc).replace(tzinfo=None)
    d = v - _EPOCH
    return Timestamp(seconds=d.days * 86_400 + d.seconds, nanos=d.microseconds * 1000)


@cache
def _plan(value_type: type, message_type: type) -> tuple[tuple[str, object, Any], ...]:
    """(field name, kind, aux) for every dataclass field the message has."""
    fields_by_name = message_type.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]
    plan = []
    for f in dataclasses.fields(value_type):
        fd = fields_by_name.get(f.name)
        if fd is None:
            continue  # not on the wire
        aux: Any = None
        if fd.message_type is not None:
            full_name = fd.message_type.full_name
            if full_name == _TIMESTAMP:
                kind = _TIMESTAMP_KIND
            elif full_name in (_VALUE, _STRUCT):
                kind, aux = _JSON, GetMessageClass(fd.message_type)
            else:
                kind = _REPEATED_MESSAGE if fd.is_repeated else _MESSAGE
                aux = GetMessageClass(fd.message_type)
        elif fd.enum_type is not None:
            kind = _REPEATED_ENUM if fd.is_repeated else _ENUM
            prefix = enum_prefix(fd.enum_type)
            aux = {
                v.name[len(prefix) :]: v.number
                for v in fd.enum_type.values
                if v.name.startswith(prefix)
            }
        else:
            kind = _REPEATED_SCALAR if fd.is_repeated else _SCALAR
        plan.append((f.name, kind, aux))
    return tuple(plan)

"""The JSON form of frames and messages, shared by ``sidekick frames`` and the golden vectors.

A frame is ``{"seq": 0, "type": "PUSH", "fields": {...}}`` (``version``, ``flags``, ``size`` may be
present too). Fields use the dataclass names; bytes are lowercase hex strings; tuples are lists;
a record is ``{"record_id", "version", "deleted", "conflict_of", "kind", "body": {...}}``.
``frame_to_json`` and ``frame_from_json`` are inverse: decode --json | encode gives the same bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sidekick_testbed.protocol.framing import PROTOCOL_VERSION, Frame
from sidekick_testbed.protocol.messages import MESSAGE_TYPES, Assigned, Change, Message, MessageType
from sidekick_testbed.protocol.records import BODY_TYPES, Record, RecordBody, RecordKind

__all__ = ["FrameJsonError", "frame_from_json", "frame_to_json", "message_from_json", "message_to_json"]

_NESTED: dict[str, type[Any]] = {"Change": Change, "Assigned": Assigned, "Record": Record}
_META_KEYS = frozenset({"seq", "type", "fields", "version", "flags", "size", "offset"})


class FrameJsonError(ValueError):
    """The JSON does not describe a valid frame; the message says where."""


def _to_json(value: Any) -> Any:
    if isinstance(value, Record):
        return {
            "record_id": value.record_id.hex(),
            "version": value.version,
            "deleted": value.deleted,
            "conflict_of": value.conflict_of.hex(),
            "kind": value.body.KIND.name,
            "body": _to_json(value.body),
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, tuple | list):
        return [_to_json(item) for item in value]
    return value


def message_to_json(message: Message) -> dict[str, Any]:
    """The ``fields`` object of a message."""
    fields: dict[str, Any] = _to_json(message)
    return fields


def frame_to_json(frame: Frame, *, offset: int | None = None) -> dict[str, Any]:
    """The JSON object of a decoded frame (with its stream offset if given)."""
    obj: dict[str, Any] = {
        "seq": frame.seq,
        "type": frame.message.TYPE.name,
        "version": frame.version,
        "flags": frame.flags,
        "size": frame.size,
    }
    if offset is not None:
        obj["offset"] = offset
    obj["fields"] = message_to_json(frame.message)
    return obj


def _expect(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FrameJsonError(f"{where}: expected {what}, got {value!r:.60}")
    return value


def _from_json(annotation: str, value: Any, where: str) -> Any:
    if annotation == "int":
        return _expect(value, int, where, "an integer")
    if annotation == "bool":
        return _expect(value, bool, where, "true or false")
    if annotation == "str":
        return _expect(value, str, where, "a string")
    if annotation == "bytes":
        text = _expect(value, str, where, "a hex string")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise FrameJsonError(f"{where}: not a hex string: {text!r:.60}") from None
    if annotation.startswith("tuple[") and annotation.endswith(", ...]"):
        inner = annotation[len("tuple[") : -len(", ...]")]
        items = _expect(value, list, where, "a list")
        return tuple(_from_json(inner, item, f"{where}[{i}]") for i, item in enumerate(items))
    if annotation == "Record":
        return _record_from_json(value, where)
    if annotation in _NESTED:
        return _dataclass_from_json(_NESTED[annotation], value, where)
    raise FrameJsonError(f"{where}: no JSON form for {annotation}")  # pragma: no cover - definitions


def _dataclass_from_json(cls: type[Any], value: Any, where: str) -> Any:
    obj = _expect(value, dict, where, "an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(obj) - set(fields)
    if unknown:
        raise FrameJsonError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name in obj:
            kwargs[name] = _from_json(str(field.type), obj[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING:
            raise FrameJsonError(f"{where}: missing field {name}")
    return cls(**kwargs)


def _record_from_json(value: Any, where: str) -> Record:
    obj = _expect(value, dict, where, "an object")
    kind_name = _expect(obj.get("kind"), str, f"{where}.kind", "a record kind name")
    try:
        kind = RecordKind[kind_name]
    except KeyError:
        names = ", ".join(k.name for k in RecordKind)
        raise FrameJsonError(f"{where}.kind: unknown record kind {kind_name!r} (one of {names})") from None
    body: RecordBody = _dataclass_from_json(BODY_TYPES[kind], obj.get("body"), f"{where}.body")
    unknown = set(obj) - {"record_id", "version", "deleted", "conflict_of", "kind", "body"}
    if unknown:
        raise FrameJsonError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("record_id", "version", "deleted"):
        if name not in obj:
            raise FrameJsonError(f"{where}: missing field {name}")
    return Record(
        record_id=_from_json("bytes", obj["record_id"], f"{where}.record_id"),
        version=_from_json("int", obj["version"], f"{where}.version"),
        deleted=_from_json("bool", obj["deleted"], f"{where}.deleted"),
        body=body,
        conflict_of=_from_json("bytes", obj.get("conflict_of", ""), f"{where}.conflict_of"),
    )


def message_from_json(type_name: str, fields: Any) -> Message:
    """Build a message of the named type (e.g. ``"PUSH"``) from its ``fields`` object."""
    try:
        mtype = MessageType[type_name]
    except (KeyError, TypeError):
        raise FrameJsonError(f"unknown message type {type_name!r}") from None
    message: Message = _dataclass_from_json(MESSAGE_TYPES[mtype], fields, type_name)
    return message


def frame_from_json(obj: Any) -> tuple[Message, int, int]:
    """(message, seq, version) of a JSON frame object."""
    obj = _expect(obj, dict, "frame", "an object")
    unknown = set(obj) - _META_KEYS
    if unknown:
        raise FrameJsonError(f"frame: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("seq", "type"):
        if key not in obj:
            raise FrameJsonError(f"frame: missing key {key!r}")
    seq = _expect(obj["seq"], int, "frame.seq", "an integer")
    version = _expect(obj.get("version", PROTOCOL_VERSION), int, "frame.version", "an integer")
    if obj.get("flags", 0) != 0:
        raise FrameJsonError("frame.flags: only 0 is defined")
    type_name = _expect(obj["type"], str, "frame.type", "a message type name")
    return message_from_json(type_name, obj.get("fields", {})), seq, version

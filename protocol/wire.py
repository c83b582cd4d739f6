"""Byte layout of the frame header, every message payload and every record body.

The layout is defined once, below, with construct. The codec that runs is generated from those
definitions at import (see "Codec generation"); construct's own compiled form, ``compiled()``, is
the reference it is tested against. Nothing outside this module sees construct: the public
functions take and return the dataclasses of ``protocol.messages`` and ``protocol.records`` and
raise only the typed errors of ``protocol.errors`` (RemoteProtocolError with MALFORMED_PAYLOAD,
BAD_FIELD or TRAILING_BYTES on decode; LocalProtocolError with BAD_FIELD on encode).

Conventions: integers big-endian and unsigned unless named otherwise; strings are UTF-8 with a
u16 byte-length prefix; tuples are a u16 count followed by the items; ids, nonces and blob ids
are 16 bytes, MACs and digests 32; booleans are one byte, 0 or 1. A record is kind u8, flags u8
(bit 0 = deleted, others 0), record_id 16, version u64, conflict_of (u8 length, 0 or 16, + bytes),
then the body of its kind.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

import construct as cs  # type: ignore[import-untyped]

from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .messages import (
    MAC_LEN,
    MESSAGE_TYPES,
    NONCE_LEN,
    Assigned,
    BlobChunk,
    Change,
    Message,
    MessageType,
)
from .records import (
    BLOB_ID_LEN,
    RECORD_ID_LEN,
    SHA256_LEN,
    CalendarEvent,
    Contact,
    Note,
    Photo,
    Record,
    RecordBody,
    RecordKind,
    Todo,
)

__all__ = [
    "CODEC_SOURCE",
    "HEADER",
    "PAYLOADS",
    "RECORD",
    "compiled",
    "HEADER_STRUCT",
    "TRAILER_STRUCT",
    "FLAG_DELETED",
    "decode_payload",
    "decode_record",
    "encode_payload",
    "encode_record",
    "with_version",
]

ID_LEN: Final = 16
FLAG_DELETED: Final = 0x01

# --------------------------------------------------------------------------------------------------
# The definitions (the single source of the byte layout)
# --------------------------------------------------------------------------------------------------

U8 = cs.Int8ub
U16 = cs.Int16ub
U32 = cs.Int32ub
U64 = cs.Int64ub
I64 = cs.Int64sb
Bool = cs.Int8ub  # 0 or 1: fields typed ``bool`` in the dataclass are checked both ways
Id = cs.Bytes(ID_LEN)
Nonce = cs.Bytes(NONCE_LEN)
Mac = cs.Bytes(MAC_LEN)
Digest = cs.Bytes(SHA256_LEN)
Text = cs.PascalString(U16, "utf8")
TextList = cs.PrefixedArray(U16, Text)

HEADER = cs.Struct(
    "magic" / cs.Bytes(2),
    "version" / U8,
    "type" / U8,
    "flags" / U16,
    "seq" / U32,
    "length" / U32,
)
TRAILER = cs.Struct("crc" / U32)

CONTACT = cs.Struct("name" / Text, "phones" / TextList, "emails" / TextList)
EVENT = cs.Struct("title" / Text, "start" / I64, "end" / I64, "location" / Text)
TODO = cs.Struct("title" / Text, "done" / Bool, "due" / I64, "priority" / U8)
NOTE = cs.Struct("title" / Text, "text" / Text)
PHOTO = cs.Struct(
    "caption" / Text, "blob_id" / cs.Bytes(BLOB_ID_LEN), "size" / U64, "sha256" / Digest,
    "content_type" / Text,
)
BODIES: Final = {
    RecordKind.CONTACT: CONTACT,
    RecordKind.EVENT: EVENT,
    RecordKind.TODO: TODO,
    RecordKind.NOTE: NOTE,
    RecordKind.PHOTO: PHOTO,
}
RECORD = cs.Struct(
    "kind" / U8,
    "flags" / U8,
    "record_id" / cs.Bytes(RECORD_ID_LEN),
    "version" / U64,
    "conflict_of" / cs.Prefixed(U8, cs.GreedyBytes),
    "body" / cs.Switch(cs.this.kind, {int(k): v for k, v in BODIES.items()}, default=cs.Error),
)
CHANGE = cs.Struct("lsn" / U64, "base_version" / U64, "record" / RECORD)
ASSIGNED = cs.Struct("lsn" / U64, "record_id" / Id, "version" / U64)

PAYLOADS: Final = {
    MessageType.HELLO: cs.Struct(
        "min_version" / U8, "max_version" / U8, "account" / Text, "device_id" / Id, "max_frame" / U32,
    ),
    MessageType.CHALLENGE: cs.Struct(
        "version" / U8, "server_id" / Id, "server_nonce" / Nonce, "max_frame" / U32, "max_batch" / U16,
    ),
    MessageType.AUTH: cs.Struct("device_nonce" / Nonce, "mac" / Mac),
    MessageType.HELLO_OK: cs.Struct(
        "server_id" / Id, "generation" / U64, "durable_lsn" / U64, "anchor" / U64, "server_mac" / Mac,
    ),
    MessageType.PUSH: cs.Struct("changes" / cs.PrefixedArray(U16, CHANGE)),
    MessageType.PUSH_ACK: cs.Struct("received_lsn" / U64),
    MessageType.COMMIT: cs.Struct("lsn" / U64),
    MessageType.DURABLE: cs.Struct(
        "generation" / U64, "durable_lsn" / U64, "assigned" / cs.PrefixedArray(U16, ASSIGNED),
    ),
    MessageType.CONFLICT: cs.Struct(
        "lsn" / U64, "record_id" / Id, "server_version" / U64, "copy_id" / Id,
    ),
    MessageType.PULL: cs.Struct("anchor" / U64, "max_records" / U32),
    MessageType.RECORDS: cs.Struct("records" / cs.PrefixedArray(U16, RECORD)),
    MessageType.PULL_END: cs.Struct("anchor" / U64, "more" / Bool),
    MessageType.PULL_ACK: cs.Struct("anchor" / U64),
    MessageType.BLOB_QUERY: cs.Struct("blob_id" / cs.Bytes(BLOB_ID_LEN)),
    MessageType.BLOB_CHUNK: cs.Struct(
        "blob_id" / cs.Bytes(BLOB_ID_LEN), "offset" / U64, "total" / U64,
        "data" / cs.Prefixed(U32, cs.GreedyBytes),
    ),
    MessageType.BLOB_ACK: cs.Struct("blob_id" / cs.Bytes(BLOB_ID_LEN), "have" / U64),
    MessageType.PING: cs.Struct("nonce" / U64),
    MessageType.PONG: cs.Struct("nonce" / U64),
    MessageType.ERROR: cs.Struct("code" / U16, "fatal" / Bool, "text" / Text),
    MessageType.BYE: cs.Struct("reason" / Text),
}

def _unwrap(sub: Any) -> Any:
    return sub.subcon if isinstance(sub, cs.Renamed) else sub


def _fixed_code(con: Any) -> str | None:
    """The ``struct`` code of a fixed-size field (``"Q"``, ``"16s"``), or None."""
    if isinstance(con, cs.FormatField):
        return str(con.fmtstr.lstrip("<>=!"))
    if isinstance(con, cs.Bytes) and isinstance(con.length, int):
        return f"{con.length}s"
    return None


def _fixed_format(definition: Any) -> str:
    """The ``struct`` format of a construct Struct made only of fixed-size fields."""
    codes = []
    for sub in definition.subcons:
        code = _fixed_code(_unwrap(sub))
        if code is None:
            raise TypeError(f"field {sub.name!r} has no fixed size")
        codes.append(code)
    return ">" + "".join(codes)


HEADER_STRUCT: Final = struct.Struct(_fixed_format(HEADER))
TRAILER_STRUCT: Final = struct.Struct(_fixed_format(TRAILER))

# --------------------------------------------------------------------------------------------------
# Codec generation
#
# construct's compiled parser trusts its input (a short read of ``Bytes`` or of a string is not
# detected) and builds containers. The codec below is generated, once at import, from the same
# definitions: consecutive fixed-size fields become one ``struct`` call, every read is bounds-checked,
# and values go straight into our dataclasses. ``compiled()`` gives construct's own compiled form of
# each definition; the tests check that both read and write the same bytes.
# --------------------------------------------------------------------------------------------------


class _EncodeError(Exception):
    """Raised by the generated encoders for a value that does not fit its field."""


class _Short(Exception):
    """Raised by the generated decoders when a length prefix points past the payload's end."""


def _make_record(
    kind: int, flags: int, record_id: bytes, version: int, conflict_of: bytes, body: RecordBody
) -> Record:
    if flags & ~FLAG_DELETED:
        raise RemoteProtocolError(ErrorCode.BAD_FIELD, f"record flags 0x{flags:02x} has unknown bits")
    if len(conflict_of) not in (0, RECORD_ID_LEN):
        raise RemoteProtocolError(
            ErrorCode.BAD_FIELD, f"conflict_of is {len(conflict_of)} bytes, not 0 or {RECORD_ID_LEN}"
        )
    return Record(record_id, version, flags == FLAG_DELETED, body, conflict_of)


def _record_flags(deleted: object) -> int:
    if deleted is True:
        return FLAG_DELETED
    if deleted is False:
        return 0
    raise _EncodeError(f"deleted must be a bool, not {deleted!r}")


def _conflict_of(value: bytes) -> bytes:
    if len(value) not in (0, RECORD_ID_LEN):
        raise _EncodeError(f"conflict_of must be empty or {RECORD_ID_LEN} bytes, got {len(value)}")
    return value


def _unknown_kind(kind: int) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_FIELD, f"unknown record kind {kind}")


def _bad_bool(name: str, value: int) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.BAD_FIELD, f"{name}: boolean byte is {value}, not 0 or 1")


_Target = Callable[..., Any]

# What each Struct decodes to, and how the encoder reads a field that is not a plain attribute.
_TARGETS: Final[dict[int, _Target]] = {
    id(CONTACT): Contact,
    id(EVENT): CalendarEvent,
    id(TODO): Todo,
    id(NOTE): Note,
    id(PHOTO): Photo,
    id(RECORD): _make_record,
    id(CHANGE): Change,
    id(ASSIGNED): Assigned,
    **{id(definition): MESSAGE_TYPES[mtype] for mtype, definition in PAYLOADS.items()},
}
_GETTERS: Final[dict[int, dict[str, str]]] = {
    id(RECORD): {
        "kind": "obj.body.KIND",
        "flags": "_record_flags(obj.deleted)",
        "conflict_of": "_conflict_of(obj.conflict_of)",
    },
}


def _prefixed_bytes(con: Any) -> Any | None:
    """The length field of ``Prefixed(FormatField, GreedyBytes)``, or None."""
    if isinstance(con, cs.Prefixed) and con.subcon is cs.GreedyBytes and _fixed_code(con.lengthfield):
        return con.lengthfield
    return None


def _text_length(con: Any) -> Any | None:
    """The length field of a ``PascalString(FormatField, "utf8")``, or None."""
    if isinstance(con, cs.StringEncoded) and con.encoding == "utf8":
        return _prefixed_bytes(con.subcon)
    return None


def _array_parts(con: Any) -> tuple[Any, Any] | None:
    """(count field, item) of a ``PrefixedArray``, or None."""
    if isinstance(con, cs.FocusedSeq) and len(con.subcons) == 2:
        count, items = con.subcons
        if isinstance(count.subcon, cs.Rebuild) and isinstance(items.subcon, cs.Array):
            return count.subcon.subcon, items.subcon.subcon
    return None


class _Generator:
    """Emits Python source for decoders ``(buf, pos, end) -> (value, pos)`` and encoders
    ``(obj, out) -> None`` of the definitions above."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {
            "RemoteProtocolError": RemoteProtocolError,
            "ErrorCode": ErrorCode,
            "_EncodeError": _EncodeError,
            "_Short": _Short,
            "_record_flags": _record_flags,
            "_conflict_of": _conflict_of,
            "_unknown_kind": _unknown_kind,
            "_bad_bool": _bad_bool,
            "str": str,
            "bytes": bytes,
            "len": len,
        }
        self.lines: list[str] = []
        self.done: dict[int, tuple[str, str]] = {}
        self.counter = 0

    def _name(self, prefix: str, value: Any) -> str:
        self.counter += 1
        name = f"{prefix}{self.counter}"
        self.namespace[name] = value
        return name

    def _struct(self, fmt: str) -> str:
        key = f"S_{fmt.replace('>', '')}"
        if key not in self.namespace:
            self.namespace[key] = struct.Struct(fmt)
        return key

    def codec(self, con: Any) -> tuple[str, str]:
        """Names of the (decoder, encoder) functions of a Struct definition."""
        if id(con) not in self.done:
            self.done[id(con)] = self._emit_struct(con)
        return self.done[id(con)]

    def _emit_struct(self, con: Any) -> tuple[str, str]:
        target = _TARGETS[id(con)]
        getters = _GETTERS.get(id(con), {})
        names = [sub.name for sub in con.subcons]
        bools: set[str] = set()
        if isinstance(target, type) and hasattr(target, "__dataclass_fields__"):
            fields = list(target.__dataclass_fields__.values())
            if [f.name for f in fields] != names:
                raise TypeError(f"{target.__name__}: definition fields {names} differ from the dataclass")
            bools = {f.name for f in fields if f.type in ("bool", bool)}
        target_name = self._name("T", target)
        dec = f"dec_{target_name}"
        enc = f"enc_{target_name}"
        what = getattr(target, "__name__", "value").lstrip("_")
        dlines = [f"def {dec}(buf, pos, end):"]
        elines = [f"def {enc}(obj, out):"]
        run: list[tuple[str, str]] = []  # pending fixed-size fields: (name, struct code)

        def flush() -> None:
            if not run:
                return
            fmt = ">" + "".join(code for _, code in run)
            s = self._struct(fmt)
            targets = ", ".join(f"f_{n}" for n, _ in run) + ","
            dlines.append(f"    {targets} = {s}.unpack_from(buf, pos)")
            dlines.append(f"    pos += {struct.calcsize(fmt)}")
            for n, code in run:
                if n in bools:
                    dlines.append(f"    if f_{n} > 1: raise _bad_bool({what + '.' + n!r}, f_{n})")
                    dlines.append(f"    f_{n} = f_{n} == 1")
                if code.endswith("s"):
                    size = int(code[:-1])
                    elines.append(f"    if len(f_{n}) != {size}: raise _EncodeError("
                                  f"{what + '.' + n + ' must be ' + str(size) + ' bytes'!r})")
                if n in bools:
                    elines.append(f"    if f_{n} is not True and f_{n} is not False: raise _EncodeError("
                                  f"{what + '.' + n + ' must be a bool'!r})")
            elines.append(f"    out.append({s}.pack({', '.join(f'f_{n}' for n, _ in run)}))")
            run.clear()

        for sub in con.subcons:
            name = sub.name
            inner = _unwrap(sub)
            elines.append(f"    f_{name} = {getters.get(name, 'obj.' + name)}")
            code = _fixed_code(inner)
            if code is not None:
                run.append((name, code))
                continue
            flush()
            self._emit_field(inner, f"f_{name}", dlines, elines, "    ", what + "." + name)
        flush()
        args = ", ".join(f"f_{n}" for n in names)
        dlines.append(f"    return {target_name}({args}), pos")
        self.lines += dlines + elines
        return dec, enc

    def _emit_field(
        self, con: Any, var: str, dlines: list[str], elines: list[str], ind: str, what: str
    ) -> None:
        length = _text_length(con)
        if length is not None:
            s = self._struct(length.fmtstr)
            dlines += [
                f"{ind}(n,) = {s}.unpack_from(buf, pos)",
                f"{ind}pos += {length.sizeof()}",
                f"{ind}e = pos + n",
                f"{ind}if e > end: raise _Short",
                f"{ind}{var} = str(buf[pos:e], 'utf-8')",
                f"{ind}pos = e",
            ]
            elines += [
                f"{ind}b = {var}.encode('utf-8')",
                f"{ind}out.append({s}.pack(len(b)))",
                f"{ind}out.append(b)",
            ]
            return
        length = _prefixed_bytes(con)
        if length is not None:
            s = self._struct(length.fmtstr)
            dlines += [
                f"{ind}(n,) = {s}.unpack_from(buf, pos)",
                f"{ind}pos += {length.sizeof()}",
                f"{ind}e = pos + n",
                f"{ind}if e > end: raise _Short",
                f"{ind}{var} = bytes(buf[pos:e])",
                f"{ind}pos = e",
            ]
            elines += [
                f"{ind}if not isinstance({var}, bytes): raise _EncodeError({what + ' must be bytes'!r})",
                f"{ind}out.append({s}.pack(len({var})))",
                f"{ind}out.append({var})",
            ]
            self.namespace["isinstance"] = isinstance
            return
        parts = _array_parts(con)
        if parts is not None:
            count, item = parts
            s = self._struct(count.fmtstr)
            items = f"{var}_items"
            dlines += [
                f"{ind}(count,) = {s}.unpack_from(buf, pos)",
                f"{ind}pos += {count.sizeof()}",
                f"{ind}{items} = []",
                f"{ind}for _ in range(count):",
            ]
            elines += [
                f"{ind}out.append({s}.pack(len({var})))",
                f"{ind}for item in {var}:",
            ]
            self.namespace["range"] = range
            self.namespace["tuple"] = tuple
            if isinstance(item, cs.Struct):
                dec, enc = self.codec(item)
                dlines.append(f"{ind}    item, pos = {dec}(buf, pos, end)")
                elines.append(f"{ind}    {enc}(item, out)")
            else:
                self._emit_field(item, "item", dlines, elines, ind + "    ", what + "[]")
            dlines += [f"{ind}    {items}.append(item)", f"{ind}{var} = tuple({items})"]
            return
        if isinstance(con, cs.Switch):
            key = con.keyfunc._Path__field
            decoders = self._name("SWD", {})
            encoders = self._name("SWE", {})
            for case, sub in con.cases.items():
                dec, enc = self.codec(sub)
                self.lines.append(f"{decoders}[{case!r}] = {dec}")
                self.lines.append(f"{encoders}[{case!r}] = {enc}")
            dlines += [
                f"{ind}d = {decoders}.get(f_{key})",
                f"{ind}if d is None: raise _unknown_kind(f_{key})",
                f"{ind}{var}, pos = d(buf, pos, end)",
            ]
            elines += [
                f"{ind}e = {encoders}.get(f_{key})",
                f"{ind}if e is None: raise _EncodeError('no layout for kind ' + repr(f_{key}))",
                f"{ind}e({var}, out)",
            ]
            return
        if isinstance(con, cs.Struct):
            dec, enc = self.codec(con)
            dlines.append(f"{ind}{var}, pos = {dec}(buf, pos, end)")
            elines.append(f"{ind}{enc}({var}, out)")
            return
        raise TypeError(f"{what}: no codec for {con!r}")

    def build(self) -> dict[str, Any]:
        # Switch tables reference functions defined later in the source: register them last.
        defs = [line for line in self.lines if not line.startswith("SW")]
        tables = [line for line in self.lines if line.startswith("SW")]
        source = "\n".join(defs + tables) + "\n"
        exec(compile(source, "<protocol.wire codec>", "exec"), self.namespace)
        self.namespace["__source__"] = source
        return self.namespace


def _generate() -> tuple[dict[int, tuple[Any, Any]], tuple[Any, Any], str]:
    gen = _Generator()
    names = {int(mtype): gen.codec(definition) for mtype, definition in PAYLOADS.items()}
    record_names = gen.codec(RECORD)
    ns = gen.build()
    codecs = {mtype: (ns[dec], ns[enc]) for mtype, (dec, enc) in names.items()}
    return codecs, (ns[record_names[0]], ns[record_names[1]]), str(ns["__source__"])


_CODECS, _RECORD_CODEC, CODEC_SOURCE = _generate()


_COMPILED: dict[int, Any] = {}


def compiled(mtype: MessageType | None = None) -> Any:
    """construct's compiled form of a payload definition (of the record definition for None).

    construct's compiled parser does not detect short reads of byte strings; it serves as the
    reference reading of the definitions in tests and benchmarks, never on untrusted input.
    """
    key = -1 if mtype is None else int(mtype)
    if key not in _COMPILED:
        _COMPILED[key] = (RECORD if mtype is None else PAYLOADS[MessageType(mtype)]).compile()
    return _COMPILED[key]

# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


_ENCODERS: Final = {MESSAGE_TYPES[MessageType(mtype)]: codec[1] for mtype, codec in _CODECS.items()}


def encode_payload(message: Message) -> bytes:
    """Encode a message's payload (without frame header and trailer)."""
    encoder = _ENCODERS.get(type(message))
    if encoder is None:
        raise LocalProtocolError(ErrorCode.BAD_FIELD, f"not a message: {type(message).__name__}")
    out: list[bytes] = []
    try:
        if type(message) is BlobChunk and message.offset + len(message.data) > message.total:
            raise _EncodeError("data extends past the blob's total")
        encoder(message, out)
        return b"".join(out)
    except Exception as exc:  # struct, codec and type errors alike: the value does not fit its field
        raise LocalProtocolError(ErrorCode.BAD_FIELD, f"cannot encode {message.TYPE.name}: {exc}") from None


def encode_record(record: Record) -> bytes:
    """Encode one record (kind, flags, id, version, conflict_of, body)."""
    if type(record) is not Record:
        raise LocalProtocolError(ErrorCode.BAD_FIELD, f"not a record: {type(record).__name__}")
    out: list[bytes] = []
    try:
        _RECORD_CODEC[1](record, out)
        return b"".join(out)
    except Exception as exc:  # struct, codec and type errors alike: the value does not fit its field
        raise LocalProtocolError(ErrorCode.BAD_FIELD, f"cannot encode record: {exc}") from None


_VERSION_AT: Final = 2 + RECORD_ID_LEN
_VERSION: Final = struct.Struct(">Q")


def with_version(encoded: bytes, version: int) -> bytes:
    """``encoded`` (an ``encode_record`` result) with the record's version replaced: the version
    sits at a fixed offset (after kind, flags and id), so nothing else is decoded or encoded."""
    if not 0 <= version <= 0xFFFF_FFFF_FFFF_FFFF:
        raise LocalProtocolError(ErrorCode.BAD_FIELD, f"version {version} out of range")
    if len(encoded) < _VERSION_AT + _VERSION.size:
        raise LocalProtocolError(ErrorCode.BAD_FIELD, "not an encoded record: too short")
    return encoded[:_VERSION_AT] + _VERSION.pack(version) + encoded[_VERSION_AT + _VERSION.size:]


def _decode_error(exc: Exception, what: str) -> RemoteProtocolError:
    """The RemoteProtocolError for an exception raised by a generated decoder."""
    if isinstance(exc, RemoteProtocolError):
        return RemoteProtocolError(exc.code, f"{what}: {exc.message}")
    if isinstance(exc, UnicodeDecodeError):
        return RemoteProtocolError(ErrorCode.BAD_FIELD, f"{what}: invalid UTF-8 ({exc.reason})")
    return RemoteProtocolError(ErrorCode.MALFORMED_PAYLOAD, f"{what}: payload ends inside a field")


_DECODE_ERRORS: Final = (RemoteProtocolError, UnicodeDecodeError, _Short, struct.error)
_DECODERS: Final = {mtype: codec[0] for mtype, codec in _CODECS.items()}
_BLOB_CHUNK: Final = int(MessageType.BLOB_CHUNK)


def decode_payload(mtype: MessageType | int, payload: bytes | bytearray | memoryview) -> Message:
    """Decode the payload of a message of type ``mtype``; RemoteProtocolError if it is not valid."""
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{int(mtype):02x}")
    end = len(payload)
    try:
        message, pos = decoder(payload, 0, end)
    except _DECODE_ERRORS as exc:
        raise _decode_error(exc, MessageType(mtype).name) from None
    if pos != end:
        raise RemoteProtocolError(
            ErrorCode.TRAILING_BYTES, f"{MessageType(mtype).name}: {end - pos} bytes after the payload"
        )
    if mtype == _BLOB_CHUNK and message.offset + len(message.data) > message.total:
        raise RemoteProtocolError(
            ErrorCode.BAD_FIELD,
            f"BLOB_CHUNK: [{message.offset}, +{len(message.data)}) exceeds total {message.total}",
        )
    result: Message = message
    return result


def decode_record(data: bytes | bytearray | memoryview) -> Record:
    """Decode one record encoded by ``encode_record``; RemoteProtocolError if it is not valid."""
    end = len(data)
    try:
        record, pos = _RECORD_CODEC[0](data, 0, end)
    except _DECODE_ERRORS as exc:
        raise _decode_error(exc, "record") from None
    if pos != end:
        raise RemoteProtocolError(ErrorCode.TRAILING_BYTES, f"record: {end - pos} bytes after the record")
    result: Record = record
    return result

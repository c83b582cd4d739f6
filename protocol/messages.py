"""Protocol messages: the events both session objects produce and accept.

Each message is a frozen, slotted dataclass; its wire type code is ``TYPE``.
The byte layout of each is defined once in ``protocol.wire``; the legal order
is the table in ``protocol.states``. docs/PROTOCOL.md is the normative text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .records import Record

NONCE_LEN = 16
MAC_LEN = 32


class MessageType(enum.IntEnum):
    """Message type byte in the frame header."""

    HELLO = 0x01
    CHALLENGE = 0x02
    AUTH = 0x03
    HELLO_OK = 0x04
    PUSH = 0x10
    PUSH_ACK = 0x11
    COMMIT = 0x12
    DURABLE = 0x13
    CONFLICT = 0x14
    PULL = 0x20
    RECORDS = 0x21
    PULL_END = 0x22
    PULL_ACK = 0x23
    BLOB_QUERY = 0x30
    BLOB_CHUNK = 0x31
    BLOB_ACK = 0x32
    PING = 0x40
    PONG = 0x41
    ERROR = 0x7E
    BYE = 0x7F


@dataclass(frozen=True, slots=True)
class Hello:
    """Device -> server: open a session (versions, identity, limits)."""

    min_version: int
    max_version: int
    account: str
    device_id: bytes
    max_frame: int

    TYPE = MessageType.HELLO


@dataclass(frozen=True, slots=True)
class Challenge:
    """Server -> device: chosen version, server identity, fresh nonce, limits."""

    version: int
    server_id: bytes
    server_nonce: bytes
    max_frame: int
    max_batch: int

    TYPE = MessageType.CHALLENGE


@dataclass(frozen=True, slots=True)
class Auth:
    """Device -> server: HMAC-SHA256 response to the challenge."""

    device_nonce: bytes
    mac: bytes

    TYPE = MessageType.AUTH


@dataclass(frozen=True, slots=True)
class HelloOk:
    """Server -> device: authenticated; generation, watermark and anchor.

    ``durable_lsn`` is the highest device LSN the server holds durable for this
    device in ``generation``; ``anchor`` is the pull anchor the server has
    recorded for this device (advanced only by PULL_ACK). ``server_mac`` proves
    the server knows the device key too.
    """

    server_id: bytes
    generation: int
    durable_lsn: int
    anchor: int
    server_mac: bytes

    TYPE = MessageType.HELLO_OK


@dataclass(frozen=True, slots=True)
class Change:
    """One change in a PUSH: the device's LSN, the version it edits, the result."""

    lsn: int
    base_version: int
    record: Record


@dataclass(frozen=True, slots=True)
class Push:
    """Device -> server: a batch of changes, in increasing LSN order."""

    changes: tuple[Change, ...]

    TYPE = MessageType.PUSH


@dataclass(frozen=True, slots=True)
class PushAck:
    """Server -> device: changes received through ``received_lsn``. NOT durable."""

    received_lsn: int

    TYPE = MessageType.PUSH_ACK


@dataclass(frozen=True, slots=True)
class Commit:
    """Device -> server: make everything received through ``lsn`` durable."""

    lsn: int

    TYPE = MessageType.COMMIT


@dataclass(frozen=True, slots=True)
class Assigned:
    """The server version a committed change received."""

    lsn: int
    record_id: bytes
    version: int


@dataclass(frozen=True, slots=True)
class Durable:
    """Server -> device: every change through ``durable_lsn`` is on stable storage
    in ``generation``. The only permission to drop a local copy."""

    generation: int
    durable_lsn: int
    assigned: tuple[Assigned, ...] = ()

    TYPE = MessageType.DURABLE


@dataclass(frozen=True, slots=True)
class Conflict:
    """Server -> device: the change at ``lsn`` edited a stale base.

    Policy: the later commit (this change) is the record's new head; the
    version it overwrote is kept as a conflict copy with id ``copy_id``.
    """

    lsn: int
    record_id: bytes
    server_version: int
    copy_id: bytes

    TYPE = MessageType.CONFLICT


@dataclass(frozen=True, slots=True)
class Pull:
    """Device -> server: send changes after ``anchor``, at most ``max_records``."""

    anchor: int
    max_records: int

    TYPE = MessageType.PULL


@dataclass(frozen=True, slots=True)
class Records:
    """Server -> device: a batch of record versions from a pull."""

    records: tuple[Record, ...]

    TYPE = MessageType.RECORDS


@dataclass(frozen=True, slots=True)
class PullEnd:
    """Server -> device: end of a pull; ``anchor`` to acknowledge; ``more`` if truncated."""

    anchor: int
    more: bool

    TYPE = MessageType.PULL_END


@dataclass(frozen=True, slots=True)
class PullAck:
    """Device -> server: the pulled records through ``anchor`` are on flash."""

    anchor: int

    TYPE = MessageType.PULL_ACK


@dataclass(frozen=True, slots=True)
class BlobQuery:
    """Device -> server: how many bytes of this blob do you hold?"""

    blob_id: bytes

    TYPE = MessageType.BLOB_QUERY


@dataclass(frozen=True, slots=True)
class BlobChunk:
    """Either direction: ``data`` is bytes [offset, offset+len) of a blob of ``total`` bytes."""

    blob_id: bytes
    offset: int
    total: int
    data: bytes

    TYPE = MessageType.BLOB_CHUNK


@dataclass(frozen=True, slots=True)
class BlobAck:
    """Server -> device: the server holds the first ``have`` bytes of the blob."""

    blob_id: bytes
    have: int

    TYPE = MessageType.BLOB_ACK


@dataclass(frozen=True, slots=True)
class Ping:
    """Either direction after authentication: liveness probe."""

    nonce: int

    TYPE = MessageType.PING


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to PING with the same nonce."""

    nonce: int

    TYPE = MessageType.PONG


@dataclass(frozen=True, slots=True)
class Error:
    """Either direction: an error with a code from ``protocol.errors.ErrorCode``."""

    code: int
    fatal: bool
    text: str = field(default="")

    TYPE = MessageType.ERROR


@dataclass(frozen=True, slots=True)
class Bye:
    """Either direction: orderly end of the session."""

    reason: str = field(default="")

    TYPE = MessageType.BYE


Message = (
    Hello | Challenge | Auth | HelloOk | Push | PushAck | Commit | Durable | Conflict | Pull
    | Records | PullEnd | PullAck | BlobQuery | BlobChunk | BlobAck | Ping | Pong | Error | Bye
)

MESSAGE_TYPES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Challenge, Auth, HelloOk, Push, PushAck, Commit, Durable, Conflict, Pull,
        Records, PullEnd, PullAck, BlobQuery, BlobChunk, BlobAck, Ping, Pong, Error, Bye,
    )
}

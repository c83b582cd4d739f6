"""The sans-I/O device and server sessions wired back to back: ids, keys, the SCRIPT conversation, Pair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidekick_testbed.protocol import auth
from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME, encode_frame
from sidekick_testbed.protocol.messages import (
    Assigned,
    Auth,
    BlobAck,
    BlobChunk,
    BlobQuery,
    Bye,
    Challenge,
    Change,
    Commit,
    Conflict,
    Durable,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    Pull,
    PullAck,
    PullEnd,
    Push,
    PushAck,
    Records,
)
from sidekick_testbed.protocol.records import Contact, Note, Photo, Record
from sidekick_testbed.protocol.session import (
    CONNECTION_CLOSED,
    NEED_DATA,
    DeviceSession,
    Event,
    ServerSession,
)
from sidekick_testbed.protocol.states import Role, SessionState

KEY = b"k" * 32
ACCOUNT = "alice"
DEVICE_ID = bytes(range(16))
SERVER_ID = bytes(range(100, 116))
SERVER_NONCE = b"N" * 16
DEVICE_NONCE = b"n" * 16
BLOB_ID = b"B" * 16
PHOTO_DATA = b"\x89JPEG" * 50


def rec(n: int, version: int = 0, body: Contact | Note | Photo | None = None) -> Record:
    """A small record with id ``n``."""
    return Record(n.to_bytes(16, "big"), version, False, body or Note(f"note {n}", "text"))


HELLO = Hello(1, 1, ACCOUNT, DEVICE_ID, DEFAULT_MAX_FRAME)
CHALLENGE = Challenge(1, SERVER_ID, SERVER_NONCE, DEFAULT_MAX_FRAME, 256)
MAC_INPUTS: dict[str, Any] = dict(
    server_nonce=SERVER_NONCE, device_nonce=DEVICE_NONCE, account=ACCOUNT, device_id=DEVICE_ID, server_id=SERVER_ID
)
AUTH = Auth(DEVICE_NONCE, auth.device_mac(KEY, **MAC_INPUTS))
HELLO_OK = HelloOk(SERVER_ID, 77, 5, 9, auth.server_mac(KEY, **MAC_INPUTS))
PHOTO = Photo("cat", BLOB_ID, len(PHOTO_DATA), b"s" * 32)

# The canonical conversation: alternating (device messages, server answers); every exchange.
SCRIPT: list[tuple[Role, tuple[Message, ...]]] = [
    (Role.DEVICE, (HELLO,)),
    (Role.SERVER, (CHALLENGE,)),
    (Role.DEVICE, (AUTH,)),
    (Role.SERVER, (HELLO_OK,)),
    (Role.DEVICE, (Push((Change(6, 0, rec(1)), Change(8, 3, rec(2)))),)),
    (Role.SERVER, (PushAck(8),)),
    (Role.DEVICE, (Commit(8),)),
    (Role.SERVER, (
        Conflict(8, rec(2).record_id, 12, b"c" * 16),
        Durable(77, 8, (Assigned(6, rec(1).record_id, 11), Assigned(8, rec(2).record_id, 12))),
    )),
    (Role.DEVICE, (Pull(9, 100),)),
    (Role.SERVER, (
        Records((rec(3, 10), rec(4, 13, PHOTO))),
        BlobChunk(BLOB_ID, 0, len(PHOTO_DATA), PHOTO_DATA[:100]),
        BlobChunk(BLOB_ID, 100, len(PHOTO_DATA), PHOTO_DATA[100:]),
        PullEnd(13, False),
    )),
    (Role.DEVICE, (PullAck(13), BlobQuery(b"Q" * 16))),
    (Role.SERVER, (BlobAck(b"Q" * 16, 0),)),
    (Role.DEVICE, (BlobChunk(b"Q" * 16, 0, 3, b"abc"),)),
    (Role.SERVER, (BlobAck(b"Q" * 16, 3),)),
    (Role.DEVICE, (Ping(41),)),
    (Role.SERVER, (Pong(41), Ping(42))),
    (Role.DEVICE, (Pong(42), Bye("done"))),
]

def drain(session: DeviceSession | ServerSession) -> list[Event]:
    """Every event buffered, up to (not including) NEED_DATA."""
    events: list[Event] = []
    while True:
        event = session.next_event()
        if event is NEED_DATA or event is CONNECTION_CLOSED:
            return events
        events.append(event)
        if session.state is SessionState.CLOSED:
            return events


def deliver(receiver: DeviceSession | ServerSession, data: bytes, *, bytewise: bool) -> list[Event]:
    """Feed ``data`` whole or one byte at a time, collecting events after every feed."""
    if not bytewise:
        receiver.receive_data(data)
        return drain(receiver)
    events: list[Event] = []
    for i in range(len(data)):
        receiver.receive_data(data[i : i + 1])
        events.extend(drain(receiver))
    return events


class Pair:
    """A device and a server session, wired back to back."""

    def __init__(self, device: DeviceSession | None = None, server: ServerSession | None = None) -> None:
        self.device = device or DeviceSession()
        self.server = server or ServerSession()
        self.sent = {Role.DEVICE: 0, Role.SERVER: 0}

    def side(self, role: Role) -> DeviceSession | ServerSession:
        return self.device if role is Role.DEVICE else self.server

    def exchange(self, role: Role, messages: Sequence[Message], *, bytewise: bool = False) -> list[Event]:
        """``role`` sends ``messages``; return what the other side sees."""
        data = b"".join(self.side(role).send(m) for m in messages)
        self.sent[role] += len(messages)
        return deliver(self.side(role.peer), data, bytewise=bytewise)

    def run(self, script: Sequence[tuple[Role, Sequence[Message]]]) -> None:
        for role, messages in script:
            assert self.exchange(role, messages) == list(messages)

    def forged(self, role: Role, message: Message) -> bytes:
        """The frame ``role`` would send next for ``message``, bypassing its session's checks."""
        return encode_frame(message, self.sent[role])


def ready_pair(device: DeviceSession | None = None, server: ServerSession | None = None) -> Pair:
    """A pair after the handshake, negotiated from the two sessions' own settings."""
    pair = Pair(device, server)
    pair.run([(Role.DEVICE, [pair.device.hello(ACCOUNT, DEVICE_ID)])])
    pair.run([(Role.SERVER, [pair.server.challenge(SERVER_ID, SERVER_NONCE)]), *SCRIPT[2:4]])
    return pair

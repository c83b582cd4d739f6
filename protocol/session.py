"""Sans-I/O sessions for both peers, in the manner of h11: bytes in, events out, bytes to send.

``send(message) -> bytes`` checks the message against the conversation table
(``protocol.states``) and the negotiated limits and returns its frame; ``receive_data(bytes)``
buffers what the transport read (``b""`` = end of stream); ``next_event()`` returns the next
message from the peer, ``NEED_DATA`` or ``CONNECTION_CLOSED``.

Frames are numbered per direction from 0 (a gap or repeat is ``BAD_SEQUENCE``; there is no
wrap-around). HELLO, CHALLENGE and an ERROR answering HELLO carry header version 1 and are at most
1024 bytes; every frame after CHALLENGE carries the negotiated version (another is ``BAD_VERSION``)
and is at most the negotiated ``max_frame``. CHALLENGE fixes the version (the highest both
support), ``max_frame`` (the smaller of both) and ``max_batch`` (the server's, capped so that a
DURABLE listing ``max_batch`` assignments fits in a frame). A PUSH holds at most ``max_batch``
changes in strictly increasing LSN order, and so do all PUSHes between two COMMITs together.

Illegal input from the peer raises ``RemoteProtocolError`` and leaves the session FAILED: only
``send(Error(...))`` and ``send(Bye())`` remain, and either closes it. A refused ``send`` raises
``LocalProtocolError`` and changes nothing. After BYE or a fatal ERROR, in either direction, the
session is CLOSED and every call raises ``LocalProtocolError(SESSION_CLOSED)``.
"""

from __future__ import annotations

import enum
from typing import Final, NoReturn

from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .framing import DEFAULT_MAX_FRAME, MAX_MAX_FRAME, MIN_MAX_FRAME, FrameDecoder, encode_frame
from .messages import (
    MESSAGE_TYPES,
    Auth,
    Challenge,
    Commit,
    Error,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    Push,
    Records,
)
from .states import IllegalTransition, Role, SessionState, check

__all__ = [
    "CONNECTION_CLOSED",
    "NEED_DATA",
    "ConnectionClosed",
    "DeviceSession",
    "Event",
    "NeedData",
    "ServerSession",
]


class NeedData(enum.Enum):
    """Sentinel type: no complete event buffered yet; feed more bytes."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value


class ConnectionClosed(enum.Enum):
    """Sentinel type: the peer closed the stream cleanly, between frames."""

    CONNECTION_CLOSED = "CONNECTION_CLOSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = NeedData.NEED_DATA
CONNECTION_CLOSED: Final = ConnectionClosed.CONNECTION_CLOSED

Event = Message | NeedData | ConnectionClosed

_MESSAGE_CLASSES: Final = frozenset(MESSAGE_TYPES.values())
DEFAULT_MAX_BATCH: Final = 256
BASE_VERSION: Final = 1
"""Header version of HELLO, CHALLENGE and an ERROR answering HELLO, whatever versions a peer speaks."""
DURABLE_OVERHEAD: Final = 36
ASSIGNED_SIZE: Final = 32
"""A DURABLE frame with n assignments is ``DURABLE_OVERHEAD + ASSIGNED_SIZE * n`` bytes."""


def _check_versions(versions: tuple[int, int]) -> tuple[int, int]:
    low, high = versions
    if not 1 <= low <= high <= 0xFF:
        raise ValueError(f"versions must satisfy 1 <= min <= max <= 255, got {versions!r}")
    return (low, high)


def _check_max_frame(max_frame: int) -> int:
    if not MIN_MAX_FRAME <= max_frame <= MAX_MAX_FRAME:
        raise ValueError(f"max_frame must be in [{MIN_MAX_FRAME}, {MAX_MAX_FRAME}], got {max_frame}")
    return max_frame


_CHECKED: Final = frozenset({Push, Records, Pong})
"""Messages ``_check_common`` looks into (a message is always of its exact class: ``send`` and the
decoder make sure); every other one passes without a look."""
_APPLIED: Final = frozenset({Push, Commit, Ping, Pong, Hello, Auth, HelloOk})
"""Messages ``_apply_common`` keeps something of."""


class _Session:
    """What both peers share: framing, sequence numbers, the state table, negotiated values."""

    _role: Role

    def __init__(self, *, max_frame: int, max_batch: int, versions: tuple[int, int]) -> None:
        self._versions = _check_versions(versions)
        self._max_frame = _check_max_frame(max_frame)
        self._max_batch = max_batch
        self._decoder = FrameDecoder(MIN_MAX_FRAME)  # until CHALLENGE: HELLO, CHALLENGE, ERROR
        self._send_limit = MIN_MAX_FRAME
        self._state = SessionState.START
        self._send_seq = 0
        self._recv_seq = 0
        self._failure: RemoteProtocolError | None = None
        self._version: int | None = None
        self._account: str | None = None
        self._device_id: bytes | None = None
        self._server_id: bytes | None = None
        self._server_nonce: bytes | None = None
        self._device_nonce: bytes | None = None
        self._generation: int | None = None
        self._durable_lsn: int | None = None
        self._anchor: int | None = None
        self._ping_nonce: int | None = None
        self._pushed_since_commit = 0
        self._batch_total = True

    # ------------------------------------------------------------------ visible state

    @property
    def role(self) -> Role:
        """The role this session speaks for."""
        return self._role

    @property
    def state(self) -> SessionState:
        """The conversation state (``protocol.states``)."""
        return self._state

    @property
    def versions(self) -> tuple[int, int]:
        """The (lowest, highest) protocol versions this side supports."""
        return self._versions

    @property
    def version(self) -> int | None:
        """The negotiated protocol version, once CHALLENGE has passed."""
        return self._version

    @property
    def max_frame(self) -> int:
        """This side's offer until CHALLENGE (frames before it are at most 1024 bytes), then the negotiated maximum."""
        return self._max_frame

    @property
    def max_batch(self) -> int:
        """Most changes per PUSH and records per RECORDS (the server's limit; 0 on a device before CHALLENGE)."""
        return self._max_batch

    @property
    def account(self) -> str | None:
        """The account named in HELLO."""
        return self._account

    @property
    def device_id(self) -> bytes | None:
        """The device id named in HELLO."""
        return self._device_id

    @property
    def server_id(self) -> bytes | None:
        """The server id from CHALLENGE (confirmed by HELLO_OK)."""
        return self._server_id

    @property
    def server_nonce(self) -> bytes | None:
        """The server's nonce from CHALLENGE."""
        return self._server_nonce

    @property
    def device_nonce(self) -> bytes | None:
        """The device's nonce from AUTH."""
        return self._device_nonce

    @property
    def generation(self) -> int | None:
        """The server's store generation from HELLO_OK."""
        return self._generation

    @property
    def durable_lsn(self) -> int | None:
        """The device's durable watermark as the server held it in HELLO_OK."""
        return self._durable_lsn

    @property
    def anchor(self) -> int | None:
        """The device's pull anchor as the server held it in HELLO_OK."""
        return self._anchor

    # ------------------------------------------------------------------ the h11-style API

    def send(self, message: Message) -> bytes:
        """Return the frame for ``message``; ``LocalProtocolError`` if it is illegal now."""
        state = self._state
        if state is SessionState.CLOSED:
            raise LocalProtocolError(ErrorCode.SESSION_CLOSED, "the session is closed")
        if type(message) not in _MESSAGE_CLASSES:
            raise LocalProtocolError(ErrorCode.BAD_FIELD, f"not a message: {type(message).__name__}")
        mtype = message.TYPE
        fatal = isinstance(message, Error) and message.fatal
        try:
            new_state = check(self._role, state, mtype, fatal=fatal)
        except IllegalTransition as exc:
            if state is SessionState.FAILED:
                raise LocalProtocolError(
                    ErrorCode.SESSION_CLOSED, f"the peer broke the protocol ({self._failure}); only ERROR or BYE"
                ) from None
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, str(exc)) from None
        self._check_outgoing(message)
        frame = encode_frame(message, self._send_seq, version=self._frame_version())
        if len(frame) > self._send_limit:
            raise LocalProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"{mtype.name} frame of {len(frame)} bytes exceeds the peer's maximum {self._send_limit}",
            )
        self._send_seq += 1
        self._apply_outgoing(message)
        self._state = new_state
        return frame

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the transport; ``b""`` means the peer closed the stream."""
        self._refuse_if_unusable()
        self._decoder.feed(data)

    def next_event(self) -> Event:
        """Return the next message from the peer, ``NEED_DATA`` or ``CONNECTION_CLOSED``.

        Raises ``RemoteProtocolError`` if the bytes or the order are illegal (the session is then
        FAILED).
        """
        self._refuse_if_unusable()
        try:
            frame = self._decoder.next_frame()
        except RemoteProtocolError as exc:
            self._fail(exc)
        if frame is None:
            return CONNECTION_CLOSED if self._decoder.eof else NEED_DATA
        start = self._decoder.offset - frame.size
        message = frame.message
        if frame.seq != self._recv_seq:
            self._fail(RemoteProtocolError(
                ErrorCode.BAD_SEQUENCE, f"frame numbered {frame.seq}, expected {self._recv_seq}", offset=start
            ))
        if frame.version != self._frame_version():
            self._fail(RemoteProtocolError(
                ErrorCode.BAD_VERSION, f"frame of version {frame.version}, expected {self._frame_version()}",
                offset=start,
            ))
        fatal = isinstance(message, Error) and message.fatal
        try:
            new_state = check(self._role.peer, self._state, message.TYPE, fatal=fatal)
        except IllegalTransition as exc:
            self._fail(RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, str(exc), offset=start))
        try:
            self._check_incoming(message)
        except RemoteProtocolError as exc:
            self._fail(RemoteProtocolError(exc.code, exc.message, offset=start))
        self._recv_seq += 1
        self._apply_incoming(message)
        self._state = new_state
        return message

    # ------------------------------------------------------------------ shared internals

    def _refuse_if_unusable(self) -> None:
        if self._state is SessionState.CLOSED:
            raise LocalProtocolError(ErrorCode.SESSION_CLOSED, "the session is closed")
        if self._state is SessionState.FAILED:
            raise LocalProtocolError(
                ErrorCode.SESSION_CLOSED, f"the peer broke the protocol ({self._failure}); send ERROR or BYE"
            )

    def _fail(self, exc: RemoteProtocolError) -> NoReturn:
        self._failure = exc
        self._state = SessionState.FAILED
        raise exc

    def _frame_version(self) -> int:
        return BASE_VERSION if self._version is None else self._version

    def _negotiated(self, version: int, max_frame: int) -> None:
        self._version = version
        self._max_frame = max_frame
        self._decoder.max_frame = max_frame
        self._send_limit = max_frame

    def _check_batch(self, count: int, what: str, error: type[ProtocolError]) -> None:
        if count > self._max_batch:
            raise error(ErrorCode.BATCH_TOO_LARGE, f"{what} of {count} exceeds max_batch {self._max_batch}")

    def _check_push(self, push: Push, error: type[ProtocolError]) -> None:
        self._check_batch(len(push.changes), "PUSH", error)
        if self._batch_total:
            self._check_batch(self._pushed_since_commit + len(push.changes), "changes pushed since COMMIT", error)
        lsns = [change.lsn for change in push.changes]
        for before, after in zip(lsns, lsns[1:], strict=False):
            if after <= before:
                raise error(ErrorCode.LSN_ORDER, f"PUSH LSNs not strictly increasing: {before} then {after}")

    def _check_pong(self, pong: Pong, error: type[ProtocolError]) -> None:
        if pong.nonce != self._ping_nonce:
            raise error(ErrorCode.BAD_FIELD, f"PONG nonce {pong.nonce} does not echo PING {self._ping_nonce}")

    def _check_common(self, message: Message, error: type[ProtocolError]) -> None:
        """Checks that do not depend on who sends: batch sizes, LSN order, PONG echo."""
        if type(message) not in _CHECKED:
            return
        if isinstance(message, Push):
            self._check_push(message, error)
        elif isinstance(message, Records):
            self._check_batch(len(message.records), "RECORDS", error)
        elif isinstance(message, Pong):
            self._check_pong(message, error)

    def _apply_common(self, message: Message) -> None:
        if type(message) not in _APPLIED:
            return
        if isinstance(message, Push):
            self._pushed_since_commit += len(message.changes)
        elif isinstance(message, Commit):
            self._pushed_since_commit = 0
        elif isinstance(message, Ping):
            self._ping_nonce = message.nonce
        elif isinstance(message, Pong):
            self._ping_nonce = None
        elif isinstance(message, Hello):
            self._account = message.account
            self._device_id = message.device_id
        elif isinstance(message, Auth):
            self._device_nonce = message.device_nonce
        elif isinstance(message, HelloOk):
            self._generation = message.generation
            self._durable_lsn = message.durable_lsn
            self._anchor = message.anchor

    def _check_outgoing(self, message: Message) -> None:
        self._check_common(message, LocalProtocolError)

    def _check_incoming(self, message: Message) -> None:
        self._check_common(message, RemoteProtocolError)

    def _apply_outgoing(self, message: Message) -> None:
        self._apply_common(message)

    def _apply_incoming(self, message: Message) -> None:
        self._apply_common(message)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} state={self._state.value} version={self._version}>"


class DeviceSession(_Session):
    """The handset's side: sends HELLO, AUTH and the requests; receives the server's answers."""

    _role = Role.DEVICE

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME, versions: tuple[int, int] = (1, 1)) -> None:
        super().__init__(max_frame=max_frame, max_batch=0, versions=versions)

    def hello(self, account: str, device_id: bytes) -> Hello:
        """The HELLO this session must send: its versions and its ``max_frame``."""
        return Hello(self._versions[0], self._versions[1], account, device_id, self._max_frame)

    def _check_outgoing(self, message: Message) -> None:
        if isinstance(message, Hello):
            offered = (message.min_version, message.max_version, message.max_frame)
            own = (*self._versions, self._max_frame)
            if offered != own:
                raise LocalProtocolError(
                    ErrorCode.BAD_FIELD,
                    f"HELLO offers (min, max, max_frame) {offered}, the session has {own}; use hello()",
                )
        super()._check_outgoing(message)

    def _check_incoming(self, message: Message) -> None:
        if isinstance(message, Challenge):
            low, high = self._versions
            if not low <= message.version <= high:
                raise RemoteProtocolError(
                    ErrorCode.VERSION_UNSUPPORTED, f"CHALLENGE chose version {message.version}, offered {low}..{high}"
                )
            if not MIN_MAX_FRAME <= message.max_frame <= self._max_frame:
                raise RemoteProtocolError(
                    ErrorCode.BAD_FIELD,
                    f"CHALLENGE max_frame {message.max_frame} not in [{MIN_MAX_FRAME}, {self._max_frame}]",
                )
            if not 1 <= message.max_batch <= (message.max_frame - DURABLE_OVERHEAD) // ASSIGNED_SIZE:
                raise RemoteProtocolError(
                    ErrorCode.BAD_FIELD, f"CHALLENGE max_batch {message.max_batch} does not fit max_frame"
                )
        elif isinstance(message, HelloOk) and message.server_id != self._server_id:
            raise RemoteProtocolError(ErrorCode.BAD_FIELD, "HELLO_OK names another server than CHALLENGE")
        super()._check_incoming(message)

    def _apply_incoming(self, message: Message) -> None:
        if isinstance(message, Challenge):
            self._negotiated(message.version, message.max_frame)
            self._max_batch = message.max_batch
            self._server_id = message.server_id
            self._server_nonce = message.server_nonce
        super()._apply_incoming(message)


class ServerSession(_Session):
    """The server's side: answers HELLO with CHALLENGE, AUTH with HELLO_OK, and every request."""

    _role = Role.SERVER

    def __init__(
        self, *, max_frame: int = DEFAULT_MAX_FRAME, max_batch: int = DEFAULT_MAX_BATCH,
        versions: tuple[int, int] = (1, 1), batch_total: bool = True,
    ) -> None:
        """``batch_total=False`` drops the limit on the changes pushed between two COMMITs (R-LIMIT-4):
        only a planted server bug (fault ``no-batch-total``) turns it off."""
        if not 1 <= max_batch <= 0xFFFF:
            raise ValueError(f"max_batch must be in [1, 65535], got {max_batch}")
        super().__init__(max_frame=max_frame, max_batch=max_batch, versions=versions)
        self._batch_total = batch_total
        self._offered: tuple[int, int] | None = None
        self._peer_max_frame: int | None = None

    @property
    def common_version(self) -> int | None:
        """The highest version both sides support, once HELLO is in; None if there is none."""
        if self._offered is None:
            return None
        high = min(self._offered[1], self._versions[1])
        low = max(self._offered[0], self._versions[0])
        return high if low <= high else None

    def challenge(self, server_id: bytes, server_nonce: bytes) -> Challenge:
        """The CHALLENGE answering the HELLO received (negotiated version and limits).

        ``server_nonce`` must be fresh for every session. Raises ``LocalProtocolError``
        (VERSION_UNSUPPORTED) if there is no common version: send ``version_refusal()`` instead.
        """
        version = self._require_common_version()
        assert self._peer_max_frame is not None
        max_frame = min(self._max_frame, self._peer_max_frame)
        max_batch = min(self._max_batch, (max_frame - DURABLE_OVERHEAD) // ASSIGNED_SIZE)
        return Challenge(version, server_id, server_nonce, max_frame, max_batch)

    def version_refusal(self) -> Error:
        """The fatal ERROR answering a HELLO with no version in common."""
        offered = "none" if self._offered is None else f"{self._offered[0]}..{self._offered[1]}"
        return Error(
            ErrorCode.VERSION_UNSUPPORTED, True,
            f"versions {offered} offered, {self._versions[0]}..{self._versions[1]} supported",
        )

    def _require_common_version(self) -> int:
        if self._offered is None or self._peer_max_frame is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "no HELLO received yet")
        version = self.common_version
        if version is None:
            raise LocalProtocolError(
                ErrorCode.VERSION_UNSUPPORTED, "no version in common with the device; send version_refusal()"
            )
        return version

    def _check_outgoing(self, message: Message) -> None:
        if isinstance(message, Challenge):
            expected = self.challenge(message.server_id, message.server_nonce)
            if message != expected:
                raise LocalProtocolError(
                    ErrorCode.BAD_FIELD,
                    f"CHALLENGE must carry version {expected.version}, max_frame {expected.max_frame}, "
                    f"max_batch {expected.max_batch}; use challenge()",
                )
        elif isinstance(message, HelloOk) and message.server_id != self._server_id:
            raise LocalProtocolError(ErrorCode.BAD_FIELD, "HELLO_OK must name the server id sent in CHALLENGE")
        super()._check_outgoing(message)

    def _apply_outgoing(self, message: Message) -> None:
        if isinstance(message, Challenge):
            self._negotiated(message.version, message.max_frame)
            self._max_batch = message.max_batch
            self._server_id = message.server_id
            self._server_nonce = message.server_nonce
        super()._apply_outgoing(message)

    def _check_incoming(self, message: Message) -> None:
        if isinstance(message, Hello):
            if message.min_version > message.max_version:
                raise RemoteProtocolError(
                    ErrorCode.BAD_FIELD, f"HELLO versions {message.min_version}..{message.max_version} are empty"
                )
            if message.max_frame < MIN_MAX_FRAME:
                raise RemoteProtocolError(
                    ErrorCode.BAD_FIELD, f"HELLO max_frame {message.max_frame} below {MIN_MAX_FRAME}"
                )
        super()._check_incoming(message)

    def _apply_incoming(self, message: Message) -> None:
        if isinstance(message, Hello):
            self._offered = (message.min_version, message.max_version)
            self._peer_max_frame = message.max_frame
        super()._apply_incoming(message)

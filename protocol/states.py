"""The conversation state machine shared by both peers: one transition table.

Both session objects track the same conversation state; each message, sent or received, moves it
along ``TRANSITIONS[(sender role, state, message type)]``. A message whose key is absent is out of
order: refused with ``UNEXPECTED_MESSAGE`` (``LocalProtocolError`` when we send it,
``RemoteProtocolError`` when the peer does).

The device leads; one request is outstanding at a time::

    START       --HELLO(D)-->       HELLO_SENT  --CHALLENGE(S)-->  CHALLENGED
    CHALLENGED  --AUTH(D)-->        AUTH_SENT   --HELLO_OK(S)-->   READY
    READY       --PUSH(D)-->        PUSHING     --PUSH_ACK(S)-->   READY
    READY       --COMMIT(D)-->      COMMITTING  --CONFLICT(S)-->   COMMITTING
                                    COMMITTING  --DURABLE(S)-->    READY
    READY       --PULL(D)-->        PULLING     --RECORDS(S)-->    PULLING
                                    PULLING     --BLOB_CHUNK(S)--> PULLING
                                    PULLING     --PULL_END(S)-->   PULLED
                                    PULLED      --PULL_ACK(D)-->   READY
    READY       --BLOB_QUERY(D)-->  BLOB_WAIT   --BLOB_ACK(S)-->   READY
    READY       --BLOB_CHUNK(D)-->  BLOB_WAIT
    READY       --PING(D)-->        DEVICE_PING --PONG(S)-->       READY
    READY       --PING(S)-->        SERVER_PING --PONG(D)-->       READY

ERROR and BYE (D = device, S = server):

* BYE from either side in any state but CLOSED -> CLOSED; but the server sends nothing at all
  before it has received HELLO (``SILENT``).
* A fatal ERROR from either side, likewise -> CLOSED (the rule in ``check``; it is the one
  transition that depends on a field, not only on the message type).
* A non-fatal ERROR is a refusal: it answers the other side's outstanding request instead of the
  normal answer, so it is legal only from the side that owes the next message, and it returns to
  READY. The server may refuse PUSH, COMMIT, PULL, BLOB_QUERY and BLOB_CHUNK (from PUSHING,
  COMMITTING, PULLING, BLOB_WAIT); the device may decline to acknowledge a pull (from PULLED; the
  server then keeps its anchor). Before authentication any ERROR ends the session: the server's
  answer to HELLO or AUTH, or the device's answer to CHALLENGE, -> CLOSED. Elsewhere (READY,
  DEVICE_PING, SERVER_PING) only a fatal ERROR is legal, so a notice can never be taken for the
  answer to a request that crossed it.
* FAILED is entered locally when the peer broke the protocol (``RemoteProtocolError``); from it
  the local side may only send ERROR (fatal or not) or BYE, which closes the session.

A server PING is legal only while READY; since it may cross a device request on the wire, a
server sends PING only on the raw binding and only after the device has been idle (docs/PROTOCOL.md
R-STATE-7); over HTTP the server never initiates.
"""

from __future__ import annotations

import enum
from typing import Final

from .messages import MessageType

__all__ = [
    "AUTHENTICATED_STATES",
    "IllegalTransition",
    "Role",
    "SILENT",
    "SessionState",
    "TRANSITIONS",
    "check",
]


class Role(enum.Enum):
    """Which peer sends a message."""

    DEVICE = "device"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        """The other role."""
        return Role.SERVER if self is Role.DEVICE else Role.DEVICE


class SessionState(enum.Enum):
    """Conversation state, the same on both sides once both have seen the same messages."""

    START = "START"
    HELLO_SENT = "HELLO_SENT"
    CHALLENGED = "CHALLENGED"
    AUTH_SENT = "AUTH_SENT"
    READY = "READY"
    PUSHING = "PUSHING"
    COMMITTING = "COMMITTING"
    PULLING = "PULLING"
    PULLED = "PULLED"
    BLOB_WAIT = "BLOB_WAIT"
    DEVICE_PING = "DEVICE_PING"
    SERVER_PING = "SERVER_PING"
    FAILED = "FAILED"
    CLOSED = "CLOSED"


D: Final = Role.DEVICE
S: Final = Role.SERVER
St = SessionState
T = MessageType

AUTHENTICATED_STATES: Final = frozenset(
    {
        St.READY, St.PUSHING, St.COMMITTING, St.PULLING, St.PULLED, St.BLOB_WAIT,
        St.DEVICE_PING, St.SERVER_PING,
    }
)

_CONVERSATION: Final[dict[tuple[Role, SessionState, MessageType], SessionState]] = {
    # handshake
    (D, St.START, T.HELLO): St.HELLO_SENT,
    (S, St.HELLO_SENT, T.CHALLENGE): St.CHALLENGED,
    (D, St.CHALLENGED, T.AUTH): St.AUTH_SENT,
    (S, St.AUTH_SENT, T.HELLO_OK): St.READY,
    # push: received, not durable
    (D, St.READY, T.PUSH): St.PUSHING,
    (S, St.PUSHING, T.PUSH_ACK): St.READY,
    # commit: conflicts, then the durability receipt
    (D, St.READY, T.COMMIT): St.COMMITTING,
    (S, St.COMMITTING, T.CONFLICT): St.COMMITTING,
    (S, St.COMMITTING, T.DURABLE): St.READY,
    # pull: records and their blobs, the end, the device's acknowledgement
    (D, St.READY, T.PULL): St.PULLING,
    (S, St.PULLING, T.RECORDS): St.PULLING,
    (S, St.PULLING, T.BLOB_CHUNK): St.PULLING,
    (S, St.PULLING, T.PULL_END): St.PULLED,
    (D, St.PULLED, T.PULL_ACK): St.READY,
    # blob upload
    (D, St.READY, T.BLOB_QUERY): St.BLOB_WAIT,
    (D, St.READY, T.BLOB_CHUNK): St.BLOB_WAIT,
    (S, St.BLOB_WAIT, T.BLOB_ACK): St.READY,
    # liveness
    (D, St.READY, T.PING): St.DEVICE_PING,
    (S, St.DEVICE_PING, T.PONG): St.READY,
    (S, St.READY, T.PING): St.SERVER_PING,
    (D, St.SERVER_PING, T.PONG): St.READY,
    # non-fatal ERROR: a refusal by the side that owes the answer
    (S, St.HELLO_SENT, T.ERROR): St.CLOSED,
    (D, St.CHALLENGED, T.ERROR): St.CLOSED,
    (S, St.AUTH_SENT, T.ERROR): St.CLOSED,
    (S, St.PUSHING, T.ERROR): St.READY,
    (S, St.COMMITTING, T.ERROR): St.READY,
    (S, St.PULLING, T.ERROR): St.READY,
    (S, St.BLOB_WAIT, T.ERROR): St.READY,
    (D, St.PULLED, T.ERROR): St.READY,
    # after a protocol error detected locally: only ERROR or BYE, then closed
    (D, St.FAILED, T.ERROR): St.CLOSED,
    (S, St.FAILED, T.ERROR): St.CLOSED,
}

SILENT: Final = frozenset({(S, St.START), (D, St.CLOSED), (S, St.CLOSED)})
"""Where a role may send nothing at all: the server before HELLO, either side once closed."""

_BYE: Final[dict[tuple[Role, SessionState, MessageType], SessionState]] = {
    (role, state, T.BYE): St.CLOSED for role in Role for state in SessionState if (role, state) not in SILENT
}

TRANSITIONS: Final[dict[tuple[Role, SessionState, MessageType], SessionState]] = {**_CONVERSATION, **_BYE}
"""``(sender role, state, message type) -> next state``; a non-fatal ERROR's destination for ERROR."""


class IllegalTransition(Exception):
    """The message may not be sent by this role in this state."""

    def __init__(self, role: Role, state: SessionState, mtype: MessageType) -> None:
        super().__init__(f"{role.value} may not send {mtype.name} in state {state.value}")
        self.role = role
        self.state = state
        self.mtype = mtype


def check(role: Role, state: SessionState, mtype: MessageType, *, fatal: bool = False) -> SessionState:
    """Return the state after ``role`` sends ``mtype`` in ``state``; ``fatal`` is the ERROR's flag.

    Raises ``IllegalTransition`` if the table (or the fatal-ERROR rule) does not allow it.
    """
    if mtype is T.ERROR and fatal and (role, state) not in SILENT:
        return St.CLOSED
    try:
        return TRANSITIONS[(role, state, mtype)]
    except KeyError:
        raise IllegalTransition(role, state, mtype) from None

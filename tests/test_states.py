"""The transition table, checked through real sessions for every (role, state, message type)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from sidekick_testbed.protocol.messages import (
    BlobAck,
    BlobChunk,
    BlobQuery,
    Bye,
    Commit,
    Conflict,
    Durable,
    Error,
    Message,
    MessageType,
    Ping,
    Pong,
    Pull,
    PullAck,
    PullEnd,
    Push,
    PushAck,
    Records,
)
from sidekick_testbed.protocol.states import (
    AUTHENTICATED_STATES,
    SILENT,
    TRANSITIONS,
    IllegalTransition,
    Role,
    SessionState,
    check,
)
from tests.session_pair import AUTH, BLOB_ID, CHALLENGE, HELLO, HELLO_OK, SCRIPT, Pair
from tests.strategies import message_of

PING_NONCE = 7

# A message of each type that passes every check but the table's, in the sessions Pair builds.
VALID: dict[MessageType, Message] = {
    MessageType.HELLO: HELLO,
    MessageType.CHALLENGE: CHALLENGE,
    MessageType.AUTH: AUTH,
    MessageType.HELLO_OK: HELLO_OK,
    MessageType.PUSH: Push(()),
    MessageType.PUSH_ACK: PushAck(0),
    MessageType.COMMIT: Commit(0),
    MessageType.DURABLE: Durable(77, 0),
    MessageType.CONFLICT: Conflict(1, b"r" * 16, 2, b"c" * 16),
    MessageType.PULL: Pull(0, 10),
    MessageType.RECORDS: Records(()),
    MessageType.PULL_END: PullEnd(0, False),
    MessageType.PULL_ACK: PullAck(0),
    MessageType.BLOB_QUERY: BlobQuery(BLOB_ID),
    MessageType.BLOB_CHUNK: BlobChunk(BLOB_ID, 0, 1, b"x"),
    MessageType.BLOB_ACK: BlobAck(BLOB_ID, 1),
    MessageType.PING: Ping(PING_NONCE),
    MessageType.PONG: Pong(PING_NONCE),
    MessageType.ERROR: Error(ErrorCode.BAD_ANCHOR, False, "refused"),
    MessageType.BYE: Bye(),
}
assert set(VALID) == set(MessageType)

D, S = Role.DEVICE, Role.SERVER
HANDSHAKE = [(role, list(batch)) for role, batch in SCRIPT[:4]]
READY = HANDSHAKE
PREFIX: dict[SessionState, list[tuple[Role, list[Message]]]] = {
    SessionState.START: [],
    SessionState.HELLO_SENT: HANDSHAKE[:1],
    SessionState.CHALLENGED: HANDSHAKE[:2],
    SessionState.AUTH_SENT: HANDSHAKE[:3],
    SessionState.READY: READY,
    SessionState.PUSHING: [*READY, (D, [Push(())])],
    SessionState.COMMITTING: [*READY, (D, [Commit(0)])],
    SessionState.PULLING: [*READY, (D, [Pull(0, 10)])],
    SessionState.PULLED: [*READY, (D, [Pull(0, 10)]), (S, [PullEnd(0, False)])],
    SessionState.BLOB_WAIT: [*READY, (D, [BlobQuery(BLOB_ID)])],
    SessionState.DEVICE_PING: [*READY, (D, [Ping(PING_NONCE)])],
    SessionState.SERVER_PING: [*READY, (S, [Ping(PING_NONCE)])],
    SessionState.CLOSED: [*READY, (D, [Bye()])],
}
SHARED_STATES = [s for s in SessionState if s is not SessionState.FAILED]
assert set(PREFIX) == set(SHARED_STATES)


def pair_in(state: SessionState) -> Pair:
    pair = Pair()
    pair.run(PREFIX[state])
    assert pair.device.state is pair.server.state is state
    return pair


def test_prefixes_only_use_table_transitions() -> None:
    for state, prefix in PREFIX.items():
        current = SessionState.START
        for role, batch in prefix:
            for message in batch:
                current = TRANSITIONS[(role, current, message.TYPE)]
        assert current is state


def test_every_state_is_reachable_from_start() -> None:
    reached = {SessionState.START}
    frontier = [SessionState.START]
    while frontier:
        here = frontier.pop()
        for (_, state, _), after in TRANSITIONS.items():
            if state is here and after not in reached:
                reached.add(after)
                frontier.append(after)
    assert reached == set(SHARED_STATES)


def test_bye_and_fatal_error_close_everywhere_but_where_a_role_is_silent() -> None:
    assert SILENT == {(S, SessionState.START), (D, SessionState.CLOSED), (S, SessionState.CLOSED)}
    for role in Role:
        for state in SessionState:
            if (role, state) in SILENT:
                for mtype, fatal in ((MessageType.BYE, False), (MessageType.ERROR, True)):
                    with pytest.raises(IllegalTransition):
                        check(role, state, mtype, fatal=fatal)
            else:
                assert check(role, state, MessageType.BYE) is SessionState.CLOSED
                assert check(role, state, MessageType.ERROR, fatal=True) is SessionState.CLOSED


def test_non_fatal_error_only_from_the_side_that_owes_an_answer() -> None:
    allowed = {(r, s) for (r, s, t) in TRANSITIONS if t is MessageType.ERROR and s is not SessionState.FAILED}
    assert allowed == {
        (S, SessionState.HELLO_SENT), (D, SessionState.CHALLENGED), (S, SessionState.AUTH_SENT),
        (S, SessionState.PUSHING), (S, SessionState.COMMITTING), (S, SessionState.PULLING),
        (S, SessionState.BLOB_WAIT), (D, SessionState.PULLED),
    }
    for role, state in allowed:
        expected = SessionState.READY if state in AUTHENTICATED_STATES else SessionState.CLOSED
        assert TRANSITIONS[(role, state, MessageType.ERROR)] is expected


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
@pytest.mark.parametrize("state", [s for s in SHARED_STATES if s is not SessionState.CLOSED], ids=lambda s: s.value)
def test_every_pair_follows_the_table_or_is_refused(role: Role, state: SessionState) -> None:
    for mtype in MessageType:
        pair = pair_in(state)
        message = VALID[mtype]
        expected = TRANSITIONS.get((role, state, mtype))
        if expected is not None:
            assert pair.exchange(role, [message]) == [message]
            assert pair.device.state is pair.server.state is expected
            continue
        with pytest.raises(LocalProtocolError) as local:
            pair.side(role).send(message)
        assert local.value.code is ErrorCode.UNEXPECTED_MESSAGE, (role, state, mtype)
        assert pair.side(role).state is state
        receiver = pair.side(role.peer)
        receiver.receive_data(pair.forged(role, message))
        with pytest.raises(RemoteProtocolError) as remote:
            receiver.next_event()
        assert remote.value.code is ErrorCode.UNEXPECTED_MESSAGE, (role, state, mtype)
        assert receiver.state is SessionState.FAILED


@given(
    st.sampled_from(list(Role)),
    st.sampled_from([s for s in SHARED_STATES if s is not SessionState.CLOSED]),
    st.sampled_from(list(MessageType)).flatmap(message_of),
)
def test_random_messages_out_of_table_are_refused_as_unexpected(
    role: Role, state: SessionState, message: Message
) -> None:
    fatal = isinstance(message, Error) and message.fatal
    if fatal or (role, state, message.TYPE) in TRANSITIONS:
        return  # legal by the table: content checks apply, covered by the exhaustive test
    pair = pair_in(state)
    with pytest.raises(LocalProtocolError) as local:
        pair.side(role).send(message)
    assert local.value.code is ErrorCode.UNEXPECTED_MESSAGE
    receiver = pair.side(role.peer)
    receiver.receive_data(pair.forged(role, message))
    with pytest.raises(RemoteProtocolError) as remote:
        receiver.next_event()
    assert remote.value.code is ErrorCode.UNEXPECTED_MESSAGE


@pytest.mark.parametrize("state", [s for s in SHARED_STATES if s is not SessionState.CLOSED], ids=lambda s: s.value)
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_fatal_error_from_either_side_closes_both(state: SessionState, role: Role) -> None:
    pair = pair_in(state)
    fatal = Error(ErrorCode.INTERNAL, True, "bye now")
    if (role, state) in SILENT:
        with pytest.raises(LocalProtocolError) as info:
            pair.side(role).send(fatal)
        assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE
        return
    assert pair.exchange(role, [fatal]) == [fatal]
    assert pair.device.state is pair.server.state is SessionState.CLOSED


@pytest.mark.parametrize("mtype", list(MessageType), ids=lambda t: t.name)
def test_closed_session_refuses_everything(mtype: MessageType) -> None:
    pair = pair_in(SessionState.CLOSED)
    for session in (pair.device, pair.server):
        with pytest.raises(LocalProtocolError) as info:
            session.send(VALID[mtype])
        assert info.value.code is ErrorCode.SESSION_CLOSED

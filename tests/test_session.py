"""Device and server sessions wired back to back: whole conversations, limits, errors, garbage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.protocol import auth
from sidekick_testbed.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME, MIN_MAX_FRAME, encode_frame
from sidekick_testbed.protocol.messages import (
    Assigned,
    Auth,
    BlobQuery,
    Bye,
    Challenge,
    Change,
    Commit,
    Durable,
    Error,
    Hello,
    HelloOk,
    Message,
    Ping,
    Pong,
    Pull,
    PullEnd,
    Push,
    PushAck,
    Records,
)
from sidekick_testbed.protocol.records import Note
from sidekick_testbed.protocol.session import (
    CONNECTION_CLOSED,
    NEED_DATA,
    DeviceSession,
    Event,
    ServerSession,
)
from sidekick_testbed.protocol.states import Role, SessionState
from tests.session_pair import (
    ACCOUNT,
    AUTH,
    BLOB_ID,
    CHALLENGE,
    DEVICE_ID,
    DEVICE_NONCE,
    HELLO,
    HELLO_OK,
    KEY,
    SCRIPT,
    SERVER_ID,
    SERVER_NONCE,
    Pair,
    deliver,
    drain,
    ready_pair,
    rec,
)

STATES_AFTER = [
    SessionState.HELLO_SENT, SessionState.CHALLENGED, SessionState.AUTH_SENT, SessionState.READY,
    SessionState.PUSHING, SessionState.READY, SessionState.COMMITTING, SessionState.READY,
    SessionState.PULLING, SessionState.PULLED, SessionState.BLOB_WAIT, SessionState.READY,
    SessionState.BLOB_WAIT, SessionState.READY, SessionState.DEVICE_PING, SessionState.SERVER_PING,
    SessionState.CLOSED,
]


def state_of(session: DeviceSession | ServerSession) -> SessionState:
    """The state, read afresh (a send or receive changes it)."""
    return session.state


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_full_conversation_each_side_sees_exactly_what_the_other_sent(bytewise: bool) -> None:
    pair = Pair()
    for (role, messages), state in zip(SCRIPT, STATES_AFTER, strict=True):
        assert pair.exchange(role, messages, bytewise=bytewise) == list(messages)
        assert pair.device.state is state
        assert pair.server.state is state
    with pytest.raises(LocalProtocolError) as info:
        pair.device.next_event()
    assert info.value.code is ErrorCode.SESSION_CLOSED


def test_handshake_negotiates_and_exposes_the_session_values() -> None:
    pair = Pair(DeviceSession(max_frame=4096), ServerSession(max_batch=7))
    hello = pair.device.hello(ACCOUNT, DEVICE_ID)
    assert hello == Hello(1, 1, ACCOUNT, DEVICE_ID, 4096)
    assert pair.exchange(Role.DEVICE, [hello]) == [hello]
    assert (pair.server.account, pair.server.device_id, pair.server.common_version) == (ACCOUNT, DEVICE_ID, 1)
    challenge = pair.server.challenge(SERVER_ID, SERVER_NONCE)
    assert challenge == Challenge(1, SERVER_ID, SERVER_NONCE, 4096, 7)
    pair.exchange(Role.SERVER, [challenge])
    for session in (pair.device, pair.server):
        assert (session.version, session.max_frame, session.max_batch) == (1, 4096, 7)
        assert (session.server_id, session.server_nonce) == (SERVER_ID, SERVER_NONCE)
        assert session.generation is None
    pair.exchange(Role.DEVICE, [AUTH])
    assert pair.server.device_nonce == DEVICE_NONCE
    pair.exchange(Role.SERVER, [HELLO_OK])
    for session in (pair.device, pair.server):
        assert (session.generation, session.durable_lsn, session.anchor) == (77, 5, 9)
        assert (session.account, session.device_id) == (ACCOUNT, DEVICE_ID)


def test_server_verifies_auth_and_device_verifies_server() -> None:
    pair = Pair()
    pair.run(SCRIPT[:2])
    [got] = pair.exchange(Role.DEVICE, [AUTH])
    assert isinstance(got, Auth)
    s = pair.server
    assert s.server_nonce is not None and s.device_nonce is not None and s.server_id is not None
    inputs: dict[str, Any] = dict(
        server_nonce=s.server_nonce, device_nonce=got.device_nonce, account=s.account or "",
        device_id=s.device_id or b"", server_id=s.server_id,
    )
    assert auth.verify(auth.device_mac(KEY, **inputs), got.mac)
    assert not auth.verify(auth.device_mac(b"other key", **inputs), got.mac)
    [ok] = pair.exchange(Role.SERVER, [HELLO_OK])
    assert isinstance(ok, HelloOk)
    assert auth.verify(auth.server_mac(KEY, **inputs), ok.server_mac)


def test_auth_failure_closes_both_sides() -> None:
    pair = Pair()
    pair.run(SCRIPT[:3])
    refusal = Error(ErrorCode.AUTH_FAILED, True, "bad mac")
    assert pair.exchange(Role.SERVER, [refusal]) == [refusal]
    assert pair.device.state is pair.server.state is SessionState.CLOSED


def test_no_common_version_is_refused_with_the_helper() -> None:
    pair = Pair(server=ServerSession(versions=(2, 3)))
    pair.exchange(Role.DEVICE, [HELLO])
    assert pair.server.common_version is None
    with pytest.raises(LocalProtocolError) as info:
        pair.server.challenge(SERVER_ID, SERVER_NONCE)
    assert info.value.code is ErrorCode.VERSION_UNSUPPORTED
    refusal = pair.server.version_refusal()
    assert (refusal.code, refusal.fatal) == (ErrorCode.VERSION_UNSUPPORTED, True)
    assert pair.exchange(Role.SERVER, [refusal]) == [refusal]
    assert pair.device.state is pair.server.state is SessionState.CLOSED


@pytest.mark.parametrize(
    ("device", "server", "common"),
    [((1, 1), (1, 1), 1), ((1, 3), (2, 5), 3), ((1, 2), (1, 4), 2), ((3, 4), (1, 2), None)],
)
def test_common_version_is_the_highest_both_support(
    device: tuple[int, int], server: tuple[int, int], common: int | None
) -> None:
    session = ServerSession(versions=server)
    session.receive_data(encode_frame(Hello(*device, ACCOUNT, DEVICE_ID, DEFAULT_MAX_FRAME), 0))
    session.next_event()
    assert session.common_version == common


def test_challenge_other_than_the_negotiated_one_is_refused() -> None:
    pair = Pair(server=ServerSession(max_batch=7))
    pair.exchange(Role.DEVICE, [HELLO])
    with pytest.raises(LocalProtocolError) as info:
        pair.server.send(Challenge(1, SERVER_ID, SERVER_NONCE, DEFAULT_MAX_FRAME, 256))
    assert info.value.code is ErrorCode.BAD_FIELD
    assert pair.server.state is SessionState.HELLO_SENT


def test_device_refuses_a_challenge_outside_its_offer() -> None:
    pair = Pair(DeviceSession(max_frame=2048))
    pair.exchange(Role.DEVICE, [pair.device.hello(ACCOUNT, DEVICE_ID)])
    pair.device.receive_data(pair.forged(Role.SERVER, Challenge(1, SERVER_ID, SERVER_NONCE, 4096, 5)))
    with pytest.raises(RemoteProtocolError) as info:
        pair.device.next_event()
    assert info.value.code is ErrorCode.BAD_FIELD


def test_hello_must_match_the_session_configuration() -> None:
    with pytest.raises(LocalProtocolError) as info:
        DeviceSession(max_frame=4096).send(HELLO)
    assert info.value.code is ErrorCode.BAD_FIELD


def test_negotiated_max_frame_binds_both_directions() -> None:
    pair = ready_pair(DeviceSession(max_frame=MIN_MAX_FRAME))
    pair.exchange(Role.DEVICE, [Pull(0, 10)])
    big = Records(tuple(rec(i, i, Note("x" * 100)) for i in range(1, 20)))
    with pytest.raises(LocalProtocolError) as info:
        pair.server.send(big)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert pair.server.state is SessionState.PULLING
    pair.device.receive_data(pair.forged(Role.SERVER, big)[:20])
    with pytest.raises(RemoteProtocolError) as remote:
        pair.device.next_event()  # refused from the header alone, before the body arrives
    assert remote.value.code is ErrorCode.FRAME_TOO_LARGE


def test_push_batch_and_lsn_order_are_enforced_on_both_sides() -> None:
    too_many = Push(tuple(Change(i, 0, rec(i)) for i in range(1, 4)))
    disordered = Push((Change(5, 0, rec(1)), Change(5, 0, rec(2))))
    for push, code in ((too_many, ErrorCode.BATCH_TOO_LARGE), (disordered, ErrorCode.LSN_ORDER)):
        pair = ready_pair(server=ServerSession(max_batch=2))
        with pytest.raises(LocalProtocolError) as local:
            pair.device.send(push)
        assert local.value.code is code
        assert pair.device.state is SessionState.READY
        pair.server.receive_data(pair.forged(Role.DEVICE, push))
        with pytest.raises(RemoteProtocolError) as remote:
            pair.server.next_event()
        assert remote.value.code is code
        assert pair.server.state is SessionState.FAILED


def test_records_batch_is_enforced_on_both_sides() -> None:
    pair = ready_pair(server=ServerSession(max_batch=2))
    pair.exchange(Role.DEVICE, [Pull(0, 10)])
    records = Records((rec(1, 1), rec(2, 2), rec(3, 3)))
    with pytest.raises(LocalProtocolError) as local:
        pair.server.send(records)
    assert local.value.code is ErrorCode.BATCH_TOO_LARGE
    pair.device.receive_data(pair.forged(Role.SERVER, records))
    with pytest.raises(RemoteProtocolError) as remote:
        pair.device.next_event()
    assert remote.value.code is ErrorCode.BATCH_TOO_LARGE


def test_pong_must_echo_the_ping() -> None:
    pair = ready_pair()
    pair.exchange(Role.DEVICE, [Ping(1)])
    with pytest.raises(LocalProtocolError) as info:
        pair.server.send(Pong(2))
    assert info.value.code is ErrorCode.BAD_FIELD
    assert pair.exchange(Role.SERVER, [Pong(1)]) == [Pong(1)]


def test_out_of_order_send_is_refused_and_changes_nothing() -> None:
    device = DeviceSession()
    with pytest.raises(LocalProtocolError) as info:
        device.send(Push(()))
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert device.state is SessionState.START
    device.send(HELLO)  # still usable, and numbered from 0
    server = ServerSession()
    server.receive_data(encode_frame(HELLO, 0))
    assert server.next_event() == HELLO


def test_out_of_order_receipt_fails_the_session_then_only_error_or_bye() -> None:
    pair = Pair()
    pair.server.receive_data(pair.forged(Role.DEVICE, Commit(1)))
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.next_event()
    assert info.value.code is ErrorCode.UNEXPECTED_MESSAGE
    assert pair.server.state is SessionState.FAILED
    for call in (pair.server.next_event, lambda: pair.server.receive_data(b"x"), lambda: pair.server.send(CHALLENGE)):
        with pytest.raises(LocalProtocolError) as closed:
            call()
        assert closed.value.code is ErrorCode.SESSION_CLOSED
    pair.server.send(Error(ErrorCode.UNEXPECTED_MESSAGE, False, "commit before hello"))
    assert state_of(pair.server) is SessionState.CLOSED
    with pytest.raises(LocalProtocolError) as closed:
        pair.server.send(Bye())
    assert closed.value.code is ErrorCode.SESSION_CLOSED


def test_garbage_gives_the_framing_code_and_offset() -> None:
    pair = ready_pair()
    pair.device.receive_data(b"XX" + bytes(20))
    with pytest.raises(RemoteProtocolError) as info:
        pair.device.next_event()
    assert info.value.code is ErrorCode.BAD_MAGIC
    assert info.value.offset == len(encode_frame(CHALLENGE, 0)) + len(encode_frame(HELLO_OK, 1))
    pair.device.send(Bye("garbage"))
    assert pair.device.state is SessionState.CLOSED


def test_repeated_or_skipped_frames_are_bad_sequence() -> None:
    for seq in (0, 2):
        pair = Pair()
        pair.exchange(Role.DEVICE, [HELLO])
        pair.server.receive_data(encode_frame(Bye(), seq))
        with pytest.raises(RemoteProtocolError) as info:
            pair.server.next_event()
        assert info.value.code is ErrorCode.BAD_SEQUENCE


def test_clean_eof_is_connection_closed_and_mid_frame_eof_is_truncated() -> None:
    pair = ready_pair()
    pair.device.receive_data(b"")
    assert pair.device.next_event() is CONNECTION_CLOSED
    assert pair.device.next_event() is CONNECTION_CLOSED
    pair = ready_pair()
    pair.device.receive_data(pair.server.send(Ping(1))[:-1])
    pair.device.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as info:
        pair.device.next_event()
    assert info.value.code is ErrorCode.TRUNCATED


@pytest.mark.parametrize(
    ("request_", "state"),
    [
        (Push(()), SessionState.PUSHING), (Commit(1), SessionState.COMMITTING),
        (Pull(0, 1), SessionState.PULLING), (BlobQuery(BLOB_ID), SessionState.BLOB_WAIT),
    ],
)
def test_non_fatal_server_error_refuses_the_request_and_returns_to_ready(
    request_: Message, state: SessionState
) -> None:
    pair = ready_pair()
    pair.exchange(Role.DEVICE, [request_])
    assert pair.server.state is state
    refusal = Error(ErrorCode.BAD_ANCHOR, False, "no")
    assert pair.exchange(Role.SERVER, [refusal]) == [refusal]
    assert pair.device.state is pair.server.state is SessionState.READY


def test_device_may_decline_a_pull_and_carry_on() -> None:
    pair = ready_pair()
    pair.run([(Role.DEVICE, [Pull(0, 5)]), (Role.SERVER, [PullEnd(3, False)])])
    pair.run([(Role.DEVICE, [Error(ErrorCode.STORAGE, False, "flash full"), Push(())])])
    assert pair.device.state is pair.server.state is SessionState.PUSHING


def test_fatal_error_closes_from_ready() -> None:
    pair = ready_pair()
    fatal = Error(ErrorCode.SHUTTING_DOWN, True)
    assert pair.exchange(Role.SERVER, [fatal]) == [fatal]
    assert pair.device.state is pair.server.state is SessionState.CLOSED


@given(st.binary(max_size=300))
def test_random_bytes_only_give_events_or_remote_errors(data: bytes) -> None:
    for session in (ServerSession(), ready_pair().device):
        try:
            session.receive_data(data)
            session.receive_data(b"")
            drain(session)
        except RemoteProtocolError:
            assert session.state is SessionState.FAILED


def _conversation_bytes() -> tuple[bytes, list[Message]]:
    """Everything the server sends in SCRIPT, and the messages in it."""
    pair = Pair()
    sent: list[bytes] = []
    messages: list[Message] = []
    for role, batch in SCRIPT:
        data = b"".join(pair.side(role).send(m) for m in batch)
        deliver(pair.side(role.peer), data, bytewise=False)
        if role is Role.SERVER:
            sent.append(data)
            messages.extend(batch)
    return b"".join(sent), messages


SERVER_STREAM, SERVER_MESSAGES = _conversation_bytes()


@given(
    st.lists(st.integers(0, len(SERVER_STREAM)), max_size=40),
    st.integers(0, len(SERVER_STREAM) - 1),
    st.integers(1, 255),
)
def test_any_chunking_gives_the_same_events_and_mutations_only_remote_errors(
    cuts: list[int], position: int, value: int
) -> None:
    bounds = sorted({0, len(SERVER_STREAM), *cuts})
    chunks = [SERVER_STREAM[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert _device_events(chunks) == SERVER_MESSAGES
    mutated = bytearray(SERVER_STREAM)
    mutated[position] ^= value
    try:
        events = _device_events([bytes(mutated)])
    except RemoteProtocolError:
        return
    assert len(events) <= len(SERVER_MESSAGES)


def _device_events(chunks: Sequence[bytes]) -> list[Event]:
    """Drive a device through SCRIPT, taking the server's side from ``chunks`` of raw bytes."""
    device = DeviceSession()
    events: list[Event] = []
    pending = list(chunks)
    for role, batch in SCRIPT:
        if role is Role.DEVICE:
            for m in batch:
                if device.state is SessionState.CLOSED:
                    return events
                try:
                    device.send(m)
                except LocalProtocolError:
                    return events  # the mutated stream took the conversation elsewhere
            continue
        want = len(events) + len(batch)
        while len(events) < want:
            if device.state is SessionState.CLOSED:
                return events
            event = device.next_event()
            if event is NEED_DATA:
                if not pending:
                    return events
                device.receive_data(pending.pop(0))
                continue
            assert event is not CONNECTION_CLOSED
            events.append(event)
    return events


def test_frames_before_challenge_are_limited_to_1024_bytes() -> None:
    long_hello = Hello(1, 1, "a" * 1000, DEVICE_ID, DEFAULT_MAX_FRAME)
    with pytest.raises(LocalProtocolError) as local:
        DeviceSession().send(long_hello)
    assert local.value.code is ErrorCode.FRAME_TOO_LARGE
    server = ServerSession()
    server.receive_data(encode_frame(long_hello, 0)[:20])  # the header alone is enough to refuse it
    with pytest.raises(RemoteProtocolError) as remote:
        server.next_event()
    assert remote.value.code is ErrorCode.FRAME_TOO_LARGE


def test_max_batch_is_capped_so_a_full_durable_fits_a_frame() -> None:
    pair = Pair(DeviceSession(max_frame=MIN_MAX_FRAME), ServerSession(max_batch=256))
    pair.exchange(Role.DEVICE, [pair.device.hello(ACCOUNT, DEVICE_ID)])
    challenge = pair.server.challenge(SERVER_ID, SERVER_NONCE)
    assert (challenge.max_frame, challenge.max_batch) == (MIN_MAX_FRAME, (MIN_MAX_FRAME - 36) // 32)
    pair.exchange(Role.SERVER, [challenge])
    assert pair.device.max_batch == pair.server.max_batch == challenge.max_batch
    full = Durable(77, 1, tuple(Assigned(i, rec(i).record_id, i) for i in range(challenge.max_batch)))
    assert len(encode_frame(full, 0)) <= MIN_MAX_FRAME


def test_device_refuses_a_max_batch_that_cannot_fit() -> None:
    pair = Pair()
    pair.exchange(Role.DEVICE, [HELLO])
    pair.device.receive_data(pair.forged(Role.SERVER, Challenge(1, SERVER_ID, SERVER_NONCE, MIN_MAX_FRAME, 31)))
    with pytest.raises(RemoteProtocolError) as info:
        pair.device.next_event()
    assert info.value.code is ErrorCode.BAD_FIELD


def test_changes_pushed_between_commits_are_bounded_by_max_batch() -> None:
    pair = ready_pair(server=ServerSession(max_batch=2))
    pair.run([(Role.DEVICE, [Push((Change(1, 0, rec(1)), Change(2, 0, rec(2))))]), (Role.SERVER, [PushAck(2)])])
    third = Push((Change(3, 0, rec(3)),))
    with pytest.raises(LocalProtocolError) as local:
        pair.device.send(third)
    assert local.value.code is ErrorCode.BATCH_TOO_LARGE
    pair.run([(Role.DEVICE, [Commit(2)]), (Role.SERVER, [Durable(77, 2)]), (Role.DEVICE, [third])])
    pair.run([(Role.SERVER, [PushAck(3)])])
    pair.server.receive_data(pair.forged(Role.DEVICE, Push((Change(4, 0, rec(4)), Change(5, 0, rec(5))))))
    with pytest.raises(RemoteProtocolError) as remote:
        pair.server.next_event()
    assert remote.value.code is ErrorCode.BATCH_TOO_LARGE


def test_the_batch_total_is_only_off_when_asked_for() -> None:
    """``batch_total=False`` is the planted bug no-batch-total: each PUSH alone is still bounded."""
    pair = ready_pair(server=ServerSession(max_batch=2, batch_total=False))
    pair.run([(Role.DEVICE, [Push((Change(1, 0, rec(1)), Change(2, 0, rec(2))))]), (Role.SERVER, [PushAck(2)])])
    pair.server.receive_data(pair.forged(Role.DEVICE, Push((Change(3, 0, rec(3)),))))
    assert isinstance(pair.server.next_event(), Push)


def test_sending_something_that_is_not_a_message_is_a_typed_error() -> None:
    with pytest.raises(LocalProtocolError) as info:
        DeviceSession().send("HELLO")  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.BAD_FIELD

"""Checks of the session: handshake, version negotiation, authentication, isolation, state machine."""

from __future__ import annotations

import base64

from sidekick_testbed.emulator.certify.answers import brief, challenge_of, expect_closed, expect_error, show
from sidekick_testbed.emulator.certify.changes import note_change
from sidekick_testbed.emulator.certify.client import CLOSED, SILENCE, Client, HttpRefusal
from sidekick_testbed.emulator.certify.context import CheckContext, Session
from sidekick_testbed.emulator.certify.framework import check
from sidekick_testbed.emulator.certify.verdicts import Fail, Level, Need, expect
from sidekick_testbed.protocol.auth import device_mac
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.messages import (
    Assigned,
    Auth,
    BlobAck,
    BlobChunk,
    BlobQuery,
    Bye,
    Challenge,
    Commit,
    Conflict,
    Durable,
    Error,
    Hello,
    HelloOk,
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
from sidekick_testbed.protocol.states import TRANSITIONS, Role, SessionState

ANY_ACCOUNT = "certify-probe"


# ---------------------------------------------------------------------------------------- connect

@check("handshake", "A device authenticates with the right key and reaches READY",
       requirements=("R-STATE-3", "R-AUTH-4", "R-AUTH-6", "R-GEN-2", "R-LIMIT-1", "R-LIMIT-5", "R-FRAME-7"),
       level=Level.MUST, group="connect")
async def handshake(ctx: CheckContext) -> None:
    session = await ctx.session()
    ch, ok = session.challenge, session.hello_ok
    expect(ch.max_batch >= 1 and 36 + 32 * ch.max_batch <= ch.max_frame,
           f"CHALLENGE.max_batch {ch.max_batch} does not fit a DURABLE in max_frame {ch.max_frame} (R-LIMIT-5)")
    expect(ok.durable_lsn == 0 and ok.anchor == 0,
           f"HELLO_OK for a new device reports durable_lsn {ok.durable_lsn}, anchor {ok.anchor}; both must be 0 (R-GEN-2)")
    await session.ping()
    await session.bye()


# ---------------------------------------------------------------------------------------- version

@check("version-none-common", "HELLO offering only version 2 gets a fatal VERSION_UNSUPPORTED",
       requirements=("R-VER-3", "R-VER-1", "R-ERR-3"), level=Level.MUST, group="version", needs=())
async def version_none_common(ctx: CheckContext) -> None:
    client = await ctx.connect()
    await client.send(Hello(2, 2, ANY_ACCOUNT, ctx.new_id(), 65536))
    await expect_error(client, ErrorCode.VERSION_UNSUPPORTED, "R-VER-3", "HELLO min 2 max 2")
    await expect_closed(client, "R-VER-3")


@check("version-highest-common", "HELLO offering versions 1..9 gets CHALLENGE version 1 in a version 1 header",
       requirements=("R-VER-2", "R-VER-1"), level=Level.MUST, group="version", needs=())
async def version_highest_common(ctx: CheckContext) -> None:
    client = await ctx.connect()
    await client.send(Hello(1, 9, ANY_ACCOUNT, ctx.new_id(), 65536))
    got = await client.receive()
    expect(isinstance(got, Challenge), f"HELLO 1..9: expected CHALLENGE, got {show(got)} (R-VER-2)")
    assert isinstance(got, Challenge)
    expect(got.version == 1, f"CHALLENGE chose version {got.version}; the server speaks 1 (R-VER-2)")


@check("hello-bad-fields", "HELLO with an empty version range or max_frame below 1024 gets BAD_FIELD",
       requirements=("R-MSG-1", "R-ERR-3", "R-ERR-1"), level=Level.MUST, group="version", needs=())
async def hello_bad_fields(ctx: CheckContext) -> None:
    cases = (("min_version above max_version", Hello(2, 1, ANY_ACCOUNT, ctx.new_id(), 65536)),
             ("max_frame 100", Hello(1, 1, ANY_ACCOUNT, ctx.new_id(), 100)))
    for what, hello in cases:
        client = await ctx.connect()
        await client.send(hello)
        await expect_error(client, ErrorCode.BAD_FIELD, "R-MSG-1", f"HELLO with {what}")
        await expect_closed(client, "R-ERR-3")
        await client.aclose()
    client = await ctx.connect()
    await client.send(Hello(1, 1, ANY_ACCOUNT, ctx.new_id(), 4 << 20))
    got = await client.receive()
    expect(isinstance(got, Challenge) and got.max_frame <= 1 << 20,
           f"HELLO with max_frame 4 MiB (counts as 1 MiB) got {show(got)}; expected a CHALLENGE with max_frame "
           "at most 1048576 (R-MSG-1, R-LIMIT-1)")


@check("max-frame-negotiation", "CHALLENGE takes the smaller max_frame, and a larger frame is refused",
       requirements=("R-LIMIT-1", "R-LIMIT-2", "R-LIMIT-5", "R-FRAME-5"), level=Level.MUST, group="version")
async def max_frame_negotiation(ctx: CheckContext) -> None:
    session = await ctx.session(max_frame=1024)
    ch = session.challenge
    expect(ch.max_frame == 1024, f"HELLO offered max_frame 1024, CHALLENGE chose {ch.max_frame} (R-LIMIT-1)")
    expect(36 + 32 * ch.max_batch <= 1024, f"max_batch {ch.max_batch} does not fit 1024 bytes (R-LIMIT-5)")
    lsn = session.device.lsn()
    change = note_change(lsn, ctx.new_id(), "certify: too large", text="x" * 1200)
    await session.client.send(Push((change,)))
    await session.expect_error(ErrorCode.FRAME_TOO_LARGE, "R-LIMIT-2", "a 1.3 KB frame after max_frame 1024")
    await session.expect_closed("R-ERR-3")


# ---------------------------------------------------------------------------------------- auth

async def _auth_failure(ctx: CheckContext, account_name: str, key: bytes) -> Error:
    client = await ctx.connect()
    device_id = ctx.new_id()
    await client.send(Hello(1, 1, account_name, device_id, 65536))
    ch = await client.receive()
    ch = challenge_of(ch)
    nonce = ctx.new_id()
    mac = device_mac(key, server_nonce=ch.server_nonce, device_nonce=nonce, account=account_name,
                     device_id=device_id, server_id=ch.server_id)
    await client.send(Auth(nonce, mac))
    error = await expect_error(client, ErrorCode.AUTH_FAILED, "R-AUTH-4", "AUTH with a wrong key")
    await expect_closed(client, "R-AUTH-4")
    return error


@check("auth-wrong-key", "AUTH computed with a wrong key gets a fatal AUTH_FAILED and the session ends",
       requirements=("R-AUTH-4",), level=Level.MUST, group="auth")
async def auth_wrong_key(ctx: CheckContext) -> None:
    account = ctx.account()
    await _auth_failure(ctx, account.name, bytes(b ^ 0x5A for b in account.key))


@check("auth-unknown-account", "An unknown account gets the same AUTH_FAILED as a wrong key, with no telling detail",
       requirements=("R-AUTH-4",), level=Level.MUST, group="auth")
async def auth_unknown_account(ctx: CheckContext) -> None:
    account = ctx.account()
    wrong = await _auth_failure(ctx, account.name, bytes(b ^ 0x5A for b in account.key))
    unknown = await _auth_failure(ctx, f"certify-nobody-{ctx.new_id().hex()[:12]}", account.key)
    expect(wrong.text == unknown.text,
           f"AUTH_FAILED texts differ: wrong key {wrong.text!r}, unknown account {unknown.text!r}; "
           "they must not tell the cases apart (R-AUTH-4)")


@check("auth-replay", "An AUTH replayed from another session fails; server nonces are fresh",
       requirements=("R-AUTH-5", "R-AUTH-1"), level=Level.MUST, group="auth")
async def auth_replay(ctx: CheckContext) -> None:
    device = ctx.device()
    nonces: set[bytes] = set()
    client = await ctx.connect()
    await client.send(Hello(1, 1, device.account.name, device.device_id, 65536))
    ch = await client.receive()
    ch = challenge_of(ch)
    nonces.add(ch.server_nonce)
    nonce = ctx.new_id()
    recorded = Auth(nonce, device_mac(device.account.key, server_nonce=ch.server_nonce, device_nonce=nonce,
                                      account=device.account.name, device_id=device.device_id,
                                      server_id=ch.server_id))
    await client.send(recorded)
    ok = await client.receive()
    expect(isinstance(ok, HelloOk), f"AUTH with the right key: expected HELLO_OK, got {show(ok)} (R-AUTH-4)")
    await client.aclose()
    replay = await ctx.connect()
    await replay.send(Hello(1, 1, device.account.name, device.device_id, 65536))
    ch2 = await replay.receive()
    ch2 = challenge_of(ch2)
    expect(ch2.server_nonce not in nonces, "the server reused a server nonce across sessions (R-AUTH-1)")
    nonces.add(ch2.server_nonce)
    await replay.send(recorded)
    await expect_error(replay, ErrorCode.AUTH_FAILED, "R-AUTH-5", "an AUTH replayed from an earlier session")
    await expect_closed(replay, "R-AUTH-5")
    for _ in range(3):
        probe = await ctx.connect()
        await probe.send(Hello(1, 1, device.account.name, ctx.new_id(), 65536))
        ch3 = await probe.receive()
        if isinstance(ch3, Challenge):
            expect(ch3.server_nonce not in nonces, "the server reused a server nonce across sessions (R-AUTH-1)")
            nonces.add(ch3.server_nonce)
        await probe.aclose()


@check("auth-no-secret", "Nothing the server sends contains the account key (raw, hex or base64)",
       requirements=("R-AUTH-3",), level=Level.MUST, group="auth")
async def auth_no_secret(ctx: CheckContext) -> None:
    account = ctx.account()
    session = await ctx.session()
    lsn = session.device.lsn()
    await session.push_commit([note_change(lsn, ctx.new_id(), "certify: secret scan")])
    await session.pull_all(max(0, session.hello_ok.anchor))
    await session.bye()
    await _auth_failure(ctx, account.name, bytes(b ^ 0x5A for b in account.key))
    seen = bytes(ctx.trace.server_bytes)
    forms = {"raw": account.key, "hex": account.key.hex().encode(), "HEX": account.key.hex().upper().encode(),
             "base64": base64.b64encode(account.key).rstrip(b"=")}
    for name, form in forms.items():
        expect(form not in seen, f"the server sent the account key ({name} form) on the wire (R-AUTH-3)")


# ---------------------------------------------------------------------------------------- isolation

@check("account-isolation", "A session of one account sees none of another account's records, blobs or watermarks",
       requirements=("R-AUTH-7",), level=Level.MUST, group="isolation",
       needs=(Need.SESSION, Need.SECOND_ACCOUNT))
async def account_isolation(ctx: CheckContext) -> None:
    first, second = ctx.account(0), ctx.account(1)
    device = ctx.device(first)
    session = await ctx.session(device)
    record_id, blob_id = ctx.new_id(), ctx.new_id()
    await session.upload(blob_id, b"certify isolation blob")
    _, durable = await session.push_commit([note_change(device.lsn(), record_id, "certify: account A only")])
    await session.bye()
    other = ctx.device(second)
    other.device_id = device.device_id
    spy = await ctx.session(other)
    expect(spy.hello_ok.durable_lsn == 0,
           f"account B's HELLO_OK for the same device id reports account A's watermark {spy.hello_ok.durable_lsn} (R-AUTH-7)")
    heads, _ = await spy.pull_all(0)
    expect(record_id not in heads, "account B pulled a record committed by account A (R-AUTH-7)")
    have = await spy.blob_query(blob_id)
    expect(have == 0, f"account B sees {have} bytes of account A's blob (R-AUTH-7)")
    await spy.bye()


# ---------------------------------------------------------------------------------------- state

def sample_message(ctx: CheckContext, mtype: MessageType) -> Message:
    """A well-formed message of type ``mtype`` (its payload decodes; its place may be wrong)."""
    rid = ctx.new_id()
    samples: dict[MessageType, Message] = {
        MessageType.HELLO: Hello(1, 1, ctx.account().name, ctx.new_id(), 65536),
        MessageType.CHALLENGE: Challenge(1, ctx.new_id(), ctx.new_id(), 65536, 256),
        MessageType.AUTH: Auth(ctx.new_id(), bytes(32)),
        MessageType.HELLO_OK: HelloOk(ctx.new_id(), 1, 0, 0, bytes(32)),
        MessageType.PUSH: Push((note_change(1, rid, "certify: out of place"),)),
        MessageType.PUSH_ACK: PushAck(1),
        MessageType.COMMIT: Commit(1),
        MessageType.DURABLE: Durable(1, 1, (Assigned(1, rid, 1),)),
        MessageType.CONFLICT: Conflict(1, rid, 1, ctx.new_id()),
        MessageType.PULL: Pull(0, 10),
        MessageType.RECORDS: Records(()),
        MessageType.PULL_END: PullEnd(0, False),
        MessageType.PULL_ACK: PullAck(0),
        MessageType.BLOB_QUERY: BlobQuery(ctx.new_id()),
        MessageType.BLOB_CHUNK: BlobChunk(ctx.new_id(), 0, 4, b"data"),
        MessageType.BLOB_ACK: BlobAck(ctx.new_id(), 0),
        MessageType.PING: Ping(5),
        MessageType.PONG: Pong(5),
    }
    return samples[mtype]


async def _reach(ctx: CheckContext, state: SessionState) -> Client:
    """A connection whose conversation stands in ``state`` (START, CHALLENGED, READY or PULLED)."""
    if state is SessionState.START:
        return await ctx.connect()
    if state is SessionState.CHALLENGED:
        client = await ctx.connect()
        await client.send(Hello(1, 1, ctx.account().name, ctx.new_id(), 65536))
        ch = await client.receive()
        ch = challenge_of(ch)
        client.max_frame = ch.max_frame
        return client
    session = await ctx.session()
    if state is SessionState.PULLED:
        await session.pull(session.hello_ok.anchor, 1)
    return session.client


MATRIX_STATES = (SessionState.START, SessionState.CHALLENGED, SessionState.READY, SessionState.PULLED)
MATRIX_TYPES = tuple(t for t in MessageType if t not in (MessageType.ERROR, MessageType.BYE))


@check("state-matrix", "Every message the transition table forbids a device, in every state, gets UNEXPECTED_MESSAGE",
       requirements=("R-STATE-1", "R-STATE-3", "R-STATE-4", "R-ERR-3", "R-TCP-1"), level=Level.MUST, group="state")
async def state_matrix(ctx: CheckContext) -> None:
    for state in MATRIX_STATES:
        for mtype in MATRIX_TYPES:
            if (Role.DEVICE, state, mtype) in TRANSITIONS:
                continue
            client = await _reach(ctx, state)
            ctx.trace.note(f"{mtype.name} in {state.name}: must be refused")
            await client.send(sample_message(ctx, mtype))
            doing = f"{mtype.name} sent by a device in {state.name}"
            if state is SessionState.START:
                got = await client.receive()
                if got is not CLOSED and not isinstance(got, HttpRefusal):
                    if not isinstance(got, Error) or got.code != ErrorCode.UNEXPECTED_MESSAGE or not got.fatal:
                        raise Fail(f"{doing}: expected a fatal ERROR UNEXPECTED_MESSAGE or a close, got {show(got)} "
                                   "(R-STATE-3)")
            else:
                await expect_error(client, ErrorCode.UNEXPECTED_MESSAGE, "R-STATE-1", doing)
                await expect_closed(client, "R-ERR-3")
            await client.aclose()


@check("state-nonfatal-error-refused", "A non-fatal ERROR from the device in READY gets UNEXPECTED_MESSAGE",
       requirements=("R-STATE-5",), level=Level.MUST, group="state")
async def state_nonfatal_error_refused(ctx: CheckContext) -> None:
    session = await ctx.session()
    await session.client.send(Error(ErrorCode.BAD_ANCHOR, False, "certify"))
    await session.expect_error(ErrorCode.UNEXPECTED_MESSAGE, "R-STATE-5", "a non-fatal ERROR in READY")
    await session.expect_closed("R-ERR-3")


@check("state-before-auth-refused", "PING, PUSH or PULL instead of AUTH get UNEXPECTED_MESSAGE and change nothing",
       requirements=("R-STATE-1", "R-STATE-4"), level=Level.MUST, group="state")
async def state_before_auth_refused(ctx: CheckContext) -> None:
    device = ctx.device()
    record_id = ctx.new_id()
    marker = await ctx.session()
    _, committed = await marker.push_commit([note_change(marker.device.lsn(), ctx.new_id(), "certify: marker")])
    before = max(a.version for a in committed.assigned)
    await marker.bye()
    cases: list[tuple[str, Message]] = [
        ("PING", Ping(1)),
        ("PUSH", Push((note_change(1, record_id, "certify: before auth"),))),
        ("PULL", Pull(0, 10)),
    ]
    for what, message in cases:
        client = await ctx.connect()
        await client.send(Hello(1, 1, device.account.name, device.device_id, 65536))
        ch = await client.receive()
        ch = challenge_of(ch)
        client.max_frame = ch.max_frame
        await client.send(message)
        await expect_error(client, ErrorCode.UNEXPECTED_MESSAGE, "R-STATE-1", f"{what} instead of AUTH")
        await expect_closed(client, "R-ERR-3")
        await client.aclose()
    session = await ctx.session(device)
    await session.client.send(Commit(1))
    conflicts, durable = await _commit_answer(session)
    expect(not conflicts and not durable.assigned,
           f"COMMIT 1 in a session that pushed nothing got {brief([*conflicts, durable])}, assigned "
           f"{brief(list(durable.assigned))}; DURABLE lists only changes pushed in its session (R-DUR-6), and the "
           "PUSH refused before AUTH must have changed nothing (R-STATE-4)")
    heads, _ = await session.pull_all(before)
    expect(record_id not in heads,
           f"the PUSH sent instead of AUTH (and refused) was applied: a pull finds {brief(heads.get(record_id))} "
           "(R-STATE-4)")
    await session.bye()


async def _commit_answer(session: Session) -> tuple[list[Conflict], Durable]:
    conflicts: list[Conflict] = []
    while True:
        got = await session.receive()
        if isinstance(got, Conflict):
            conflicts.append(got)
        elif isinstance(got, Durable):
            return conflicts, got
        else:
            raise Fail(f"COMMIT: expected DURABLE, got {show(got)}")


@check("state-first-frame", "A first frame other than HELLO gets no answer but an ERROR, and the session ends",
       requirements=("R-STATE-3", "R-STATE-1"), level=Level.MUST, group="state", needs=())
async def state_first_frame(ctx: CheckContext) -> None:
    client = await ctx.connect()
    await client.send(Ping(1))
    got = await client.receive()
    if isinstance(got, Error):
        expect(got.fatal, f"answer to a first frame PING: {show(got)} must be fatal (R-ERR-3)")
        await expect_closed(client, "R-ERR-3")
    elif isinstance(got, HttpRefusal):
        expect(got.status in (400, 410), f"HTTP status {got.status} for a first frame PING")
    else:
        expect(got is CLOSED, f"a first frame PING got {show(got)}; only an ERROR or a close may answer (R-STATE-3)")


@check("state-legal-conversation", "Every device request in READY gets its answer and returns to READY",
       requirements=("R-STATE-1", "R-MSG-3", "R-DUR-1", "R-BLOB-1", "R-PULL-1"), level=Level.MUST, group="state")
async def state_legal_conversation(ctx: CheckContext) -> None:
    session = await ctx.session()
    await session.ping(11)
    have = await session.blob_query(ctx.new_id())
    expect(have == 0, f"BLOB_QUERY of an unknown blob: have {have}, expected 0 (R-BLOB-1)")
    record_id = ctx.new_id()
    lsn = session.device.lsn()
    await session.push([note_change(lsn, record_id, "certify: conversation")])
    await session.ping(12)
    conflicts, durable = await session.commit(lsn)
    expect(not conflicts, f"a new record drew CONFLICT {brief(conflicts)} (R-CONFLICT-1)")
    expect(any(a.record_id == record_id and a.lsn == lsn for a in durable.assigned),
           f"DURABLE.assigned {durable.assigned} lacks the committed change (R-DUR-6)")
    result = await session.pull(session.hello_ok.anchor)
    await session.client.send(PullAck(result.end.anchor))
    await session.ping(13)
    await session.client.send(Ping(14))
    pong = await session.expect(Pong, "PING after PULL_ACK")
    expect(isinstance(pong, Pong) and pong.nonce == 14, "PONG does not echo the PING nonce (R-MSG-3)")
    await session.pull(result.end.anchor)
    await session.client.send(Error(ErrorCode.BAD_ANCHOR, False, "certify declines this pull"))
    await session.ping(15)
    await session.bye()


async def _nothing_more(session: Session, req: str, after: str) -> None:
    """After the device ended the session: TCP, the server closes without a frame; HTTP, the response
    carries no frame and the token is gone (410)."""
    got = await session.receive()
    if session.client.http:
        expect(got is SILENCE, f"after the device's {after} the server sent {show(got)}; it must send nothing ({req})")
        await session.expect_closed("R-HTTP-8")
    else:
        expect(got is CLOSED, f"after the device's {after} the server sent {show(got)}; it must close ({req})")


@check("state-fatal-error-ends", "A device's fatal ERROR ends the session; the server answers nothing",
       requirements=("R-ERR-2", "R-ERR-4", "R-STATE-6"), level=Level.MUST, group="state")
async def state_fatal_error_ends(ctx: CheckContext) -> None:
    session = await ctx.session()
    await session.client.send(Error(ErrorCode.INTERNAL, True, "certify ends this session"))
    await _nothing_more(session, "R-ERR-4, R-STATE-6", "fatal ERROR")


@check("state-bye-ends", "After the device's BYE the server ends the session without sending anything",
       requirements=("R-TCP-3", "R-STATE-6", "R-HTTP-8"), level=Level.MUST, group="state")
async def state_bye_ends(ctx: CheckContext) -> None:
    session = await ctx.session()
    await session.client.send(Bye("certify"))
    await _nothing_more(session, "R-TCP-3, R-STATE-6", "BYE")

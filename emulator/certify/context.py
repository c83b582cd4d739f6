"""What a check works with: device identities, connections, authenticated sessions, server commands.

``CheckContext`` opens recorded connections and sessions for one check and runs the target's
restart, restore and power-cut commands; ``Session`` wraps an authenticated connection with helpers
(push, commit, pull, ...) that fail the check with a clear message when the server answers
something else than the spec requires.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from sidekick_testbed.emulator.certify.answers import (
    Refused,
    expect_closed,
    expect_error,
    legal_end,
    legal_refusal,
    show,
)
from sidekick_testbed.emulator.certify.client import Client, ConnectFailed, Received, ServerViolation, Trace
from sidekick_testbed.emulator.certify.target import Account, Target
from sidekick_testbed.emulator.certify.verdicts import Fail, Inconclusive, Need
from sidekick_testbed.protocol.auth import device_mac, server_mac, verify
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.messages import (
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
    Error,
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
from sidekick_testbed.protocol.records import Record

__all__ = ["ArmedCommand", "CheckContext", "Device", "PullResult", "Session"]

DEFAULT_MAX_FRAME = 65536


@dataclass(slots=True)
class Device:
    """An emulated device identity: account, device id and its LSN counter."""

    account: Account
    device_id: bytes
    next_lsn: int = 1

    def lsn(self) -> int:
        """Take the next LSN."""
        value = self.next_lsn
        self.next_lsn += 1
        return value


@dataclass(frozen=True, slots=True)
class PullResult:
    """Everything one pull returned."""

    records: tuple[Record, ...]
    blobs: dict[bytes, bytes]
    end: PullEnd
    frames: tuple[Message, ...] = field(default=())


class AnchorAhead(Fail):
    """The server answered a PULL with BAD_ANCHOR: its versions end below the anchor."""


class Session:
    """An authenticated session of one device, with request helpers that check the answers."""

    def __init__(self, ctx: CheckContext, client: Client, device: Device, challenge: Challenge,
                 hello_ok: HelloOk) -> None:
        self.ctx = ctx
        self.client = client
        self.device = device
        self.challenge = challenge
        self.hello_ok = hello_ok
        self.since_commit = 0

    @property
    def generation(self) -> int:
        """The generation HELLO_OK named."""
        return self.hello_ok.generation

    async def receive(self) -> Received:
        """The next thing from the server."""
        return await self.client.receive()

    async def expect(self, kind: type[Message], doing: str) -> Message:
        """Receive one message of type ``kind``; Fail on anything else."""
        got = await self.client.receive()
        if not isinstance(got, kind):
            legal_end(got, doing)
            raise Fail(f"{doing}: expected {kind.TYPE.name}, got {show(got)}")
        return got

    async def push(self, changes: Sequence[Change]) -> PushAck:
        """PUSH and expect PUSH_ACK with the last LSN (R-DUR-1)."""
        self.since_commit += len(changes)
        if self.since_commit > self.challenge.max_batch:
            raise Inconclusive(f"the check pushes {self.since_commit} changes between COMMITs; the server's "
                               f"max_batch is {self.challenge.max_batch}")
        await self.client.send(Push(tuple(changes)))
        ack = await self.expect(PushAck, "PUSH")
        assert isinstance(ack, PushAck)
        if ack.received_lsn != changes[-1].lsn:
            raise Fail(f"PUSH_ACK.received_lsn {ack.received_lsn}, expected the last LSN {changes[-1].lsn} (R-DUR-1)")
        return ack

    async def commit(self, lsn: int, *, on_durable: Callable[[], Awaitable[None]] | None = None,
                     ) -> tuple[list[Conflict], Durable]:
        """COMMIT and collect CONFLICTs until DURABLE; ``on_durable`` runs the moment it arrives."""
        await self.client.send(Commit(lsn))
        self.since_commit = 0
        conflicts: list[Conflict] = []
        while True:
            got = await self.client.receive()
            if isinstance(got, Conflict):
                conflicts.append(got)
            elif isinstance(got, Durable):
                if on_durable is not None:
                    await on_durable()
                return conflicts, got
            else:
                legal_end(got, f"COMMIT {lsn}")
                raise Fail(f"COMMIT {lsn}: expected CONFLICT* DURABLE, got {show(got)}")

    async def push_commit(self, changes: Sequence[Change], *, on_durable: Callable[[], Awaitable[None]] | None = None,
                          ) -> tuple[list[Conflict], Durable]:
        """PUSH then COMMIT through the last LSN; checks DURABLE's generation and watermark."""
        await self.push(changes)
        conflicts, durable = await self.commit(changes[-1].lsn, on_durable=on_durable)
        if durable.generation != self.generation:
            raise Fail(f"DURABLE generation {durable.generation:#x} differs from HELLO_OK's {self.generation:#x} (R-DUR-4)")
        if durable.durable_lsn < changes[-1].lsn:
            raise Fail(f"DURABLE.durable_lsn {durable.durable_lsn} below the committed LSN {changes[-1].lsn} (R-DUR-3)")
        return conflicts, durable

    async def pull(self, anchor: int = 0, max_records: int = 1000) -> PullResult:
        """PULL and collect RECORDS and BLOB_CHUNKs until PULL_END (no PULL_ACK sent)."""
        await self.client.send(Pull(anchor, max_records))
        records: list[Record] = []
        frames: list[Message] = []
        blobs: dict[bytes, bytearray] = {}
        while True:
            got = await self.client.receive()
            if isinstance(got, Records):
                records.extend(got.records)
            elif isinstance(got, BlobChunk):
                buf = blobs.setdefault(got.blob_id, bytearray())
                if got.offset != len(buf):
                    raise Fail(f"pulled BLOB_CHUNK of {got.blob_id.hex()} at offset {got.offset}, expected {len(buf)} (R-BLOB-8)")
                buf += got.data
            elif isinstance(got, PullEnd):
                frames.append(got)
                return PullResult(tuple(records), {k: bytes(v) for k, v in blobs.items()}, got, tuple(frames))
            elif isinstance(got, Error) and got.code == ErrorCode.BAD_ANCHOR and not got.fatal and not records:
                raise AnchorAhead(f"PULL from {anchor} got BAD_ANCHOR ({got.text[:80]!r}) though the server confirmed "
                                  "or sent versions above it (R-PULL-5, R-CONFORM-1)")
            else:
                legal_end(got, f"PULL from {anchor}")
                raise Fail(f"PULL from {anchor}: expected RECORDS/BLOB_CHUNK/PULL_END, got {show(got)}")
            frames.append(got)

    async def pull_all(self, anchor: int = 0, *, tolerate_bad_anchor: bool = False) -> tuple[dict[bytes, Record], int]:
        """Pull (and acknowledge) until ``more`` is false; the heads by record id and the last anchor.

        With ``tolerate_bad_anchor`` a BAD_ANCHOR refusal (the server holds no version above the
        anchor: it lost some) gives no heads instead of failing the check.
        """
        heads: dict[bytes, Record] = {}
        for _ in range(1000):
            try:
                result = await self.pull(anchor)
            except AnchorAhead:
                if tolerate_bad_anchor:
                    self.ctx.trace.note(f"PULL from {anchor} refused with BAD_ANCHOR: the server's versions end below it")
                    return heads, anchor
                raise
            for record in result.records:
                heads[record.record_id] = record
            await self.client.send(PullAck(result.end.anchor))
            anchor = result.end.anchor
            if not result.end.more:
                return heads, anchor
        raise Fail("a pull never ended: PULL_END.more stayed true for 1000 pulls (R-PULL-12)")

    async def ping(self, nonce: int = 0x5EED) -> None:
        """PING and expect the PONG echoing it (R-MSG-3)."""
        await self.client.send(Ping(nonce))
        pong = await self.expect(Pong, "PING")
        assert isinstance(pong, Pong)
        if pong.nonce != nonce:
            raise Fail(f"PONG nonce {pong.nonce} does not echo PING's {nonce} (R-MSG-3)")

    async def blob_query(self, blob_id: bytes) -> int:
        """BLOB_QUERY and return BLOB_ACK.have."""
        await self.client.send(BlobQuery(blob_id))
        ack = await self.expect(BlobAck, "BLOB_QUERY")
        assert isinstance(ack, BlobAck)
        return ack.have

    async def upload(self, blob_id: bytes, data: bytes, *, start: int = 0, chunk: int = 4096,
                     total: int | None = None) -> int:
        """Upload ``data[start:]`` in chunks of a blob of ``total`` bytes; return the final BLOB_ACK.have."""
        size = len(data) if total is None else total
        have = start
        offset = start
        while offset < len(data) or (not data and offset == 0):
            piece = data[offset:offset + chunk]
            await self.client.send(BlobChunk(blob_id, offset, size, piece))
            ack = await self.expect(BlobAck, f"BLOB_CHUNK at {offset}")
            assert isinstance(ack, BlobAck)
            if ack.have != offset + len(piece):
                raise Fail(f"BLOB_ACK.have {ack.have} after a chunk ending at {offset + len(piece)} (R-BLOB-1)")
            have = ack.have
            offset += len(piece)
            if not data:
                break
        return have

    async def bye(self) -> None:
        """Send BYE and close."""
        await self.client.send(Bye("certify"))
        await self.client.aclose()

    async def expect_error(self, code: ErrorCode, req: str, doing: str) -> Error:
        """Expect ERROR ``code`` with the fatal flag of the error table (R-ERR-1)."""
        return await expect_error(self.client, code, req, doing)

    async def expect_closed(self, req: str) -> None:
        """After a fatal ERROR or BYE: the server sends nothing more and ends the session."""
        await expect_closed(self.client, req)


class CheckContext:
    """One check's access to the server under test; every connection is recorded in ``trace``."""

    def __init__(self, target: Target, rng: random.Random, trace: Trace) -> None:
        self.target = target
        self.rng = rng
        self.trace = trace
        self._clients: list[Client] = []
        self._processes: list[trio.Process] = []
        self._count = 0

    # ------------------------------------------------------------------ identities

    def new_id(self) -> bytes:
        """16 random bytes (record, device, blob ids, nonces)."""
        return self.rng.randbytes(16)

    def account(self, index: int = 0) -> Account:
        """The ``index``-th account given; Inconclusive if there is none."""
        if len(self.target.accounts) <= index:
            raise Inconclusive(f"needs {Need.SECOND_ACCOUNT.value if index else Need.SESSION.value}")
        return self.target.accounts[index]

    def device(self, account: Account | None = None) -> Device:
        """A fresh device identity (new device id, LSNs from 1)."""
        return Device(account or self.account(), self.new_id())

    # ------------------------------------------------------------------ connections

    async def connect(self, label: str | None = None) -> Client:
        """A new recorded connection (raw or HTTP per the target)."""
        self._count += 1
        name = label or f"c{self._count}"
        path = self.target.http_path if self.target.http else None
        try:
            client = await Client.connect(self.target.host, self.target.port, http_path=path, trace=self.trace,
                                          label=name, timeout=self.target.timeout)
        except ConnectFailed as exc:
            self.trace.add(name, "#", str(exc))
            raise Fail(str(exc)) from None
        self._clients.append(client)
        return client

    async def handshake(self, client: Client, device: Device, *, max_frame: int = DEFAULT_MAX_FRAME,
                        key: bytes | None = None) -> tuple[Challenge, HelloOk | Received]:
        """HELLO, CHALLENGE, AUTH; return the CHALLENGE and what answered AUTH (unchecked)."""
        account = device.account
        await client.send(Hello(1, 1, account.name, device.device_id, max_frame))
        challenge = await client.receive()
        if (why := legal_refusal(challenge)) is not None:
            raise Refused(f"the server declined the session with {why}, as it may (R-LIMIT-9, R-LIMIT-10)")
        if not isinstance(challenge, Challenge):
            raise Fail(f"HELLO: expected CHALLENGE, got {show(challenge)} (R-STATE-1)")
        if challenge.version != 1:
            raise Fail(f"CHALLENGE chose version {challenge.version}, HELLO offered 1..1 (R-VER-2)")
        if not 1024 <= challenge.max_frame <= max_frame:
            raise Fail(f"CHALLENGE.max_frame {challenge.max_frame} outside [1024, {max_frame}] (R-LIMIT-1)")
        client.max_frame = challenge.max_frame
        nonce = self.new_id()
        mac = device_mac(key if key is not None else account.key, server_nonce=challenge.server_nonce,
                         device_nonce=nonce, account=account.name, device_id=device.device_id,
                         server_id=challenge.server_id)
        await client.send(Auth(nonce, mac))
        answer = await client.receive()
        if isinstance(answer, HelloOk):
            expected = server_mac(account.key, server_nonce=challenge.server_nonce, device_nonce=nonce,
                                  account=account.name, device_id=device.device_id, server_id=challenge.server_id)
            if answer.server_id != challenge.server_id:
                raise Fail("HELLO_OK.server_id differs from CHALLENGE's (R-AUTH-6, R-GEN-3)")
            if not verify(expected, answer.server_mac):
                raise Fail("HELLO_OK.server_mac is not the server MAC of section 7 (R-AUTH-6)")
            if answer.generation == 0:
                raise Fail("HELLO_OK.generation is 0; a generation is non-zero (R-GEN-1)")
        return challenge, answer

    async def session(self, device: Device | None = None, *, max_frame: int = DEFAULT_MAX_FRAME,
                      label: str | None = None) -> Session:
        """A new connection, authenticated as ``device`` (a fresh one by default)."""
        device = device or self.device()
        client = await self.connect(label)
        challenge, answer = await self.handshake(client, device, max_frame=max_frame)
        if (why := legal_refusal(answer)) is not None:
            raise Refused(f"the server declined the session with {why}, as it may (R-LIMIT-9, R-LIMIT-10)")
        if not isinstance(answer, HelloOk):
            raise Fail(f"AUTH with the right key: expected HELLO_OK, got {show(answer)} (R-AUTH-4)")
        return Session(self, client, device, challenge, answer)

    async def aclose(self) -> None:
        """Close every connection the check opened; kill a command armed and never fired."""
        for client in self._clients:
            await client.aclose()
        self._clients.clear()
        for process in self._processes:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
        self._processes.clear()

    # ------------------------------------------------------------------ restarts and restores

    async def run_command(self, command: str, what: str) -> None:
        """Run a shell command (restart, restore); Inconclusive if it fails."""
        self.trace.note(f"running {what} command: {command}")
        limit = self.target.ready_timeout
        try:
            with trio.fail_after(limit):
                result = await trio.run_process(command, shell=True, check=False, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            raise Inconclusive(f"the {what} command could not run: {exc}") from None
        except trio.TooSlowError:
            raise Inconclusive(f"the {what} command did not finish within {limit:g}s") from None
        if result.returncode != 0:
            raise Inconclusive(f"the {what} command exited with status {result.returncode}")
        self.trace.note(f"{what} command done")

    async def arm_command(self, command: str, what: str) -> ArmedCommand:
        """Start a shell command that waits for ``fire()`` before it runs (``read`` on its stdin), so
        that it runs the moment something arrives, without a process start in between."""
        process = await trio.lowlevel.open_process(["sh", "-c", "read -r _sidekick_go\n" + command],
                                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL)
        self._processes.append(process)
        return ArmedCommand(self, process, command, what)

    async def wait_ready(self, device: Device) -> Session:
        """Poll until the server accepts a session again (up to ``ready_timeout``)."""
        deadline = trio.current_time() + self.target.ready_timeout
        last = "no attempt"
        while trio.current_time() < deadline:
            try:
                with trio.move_on_after(self.target.timeout):
                    return await self._quiet_session(device)
                last = "timeout"
            except (Fail, ServerViolation, Refused) as exc:
                last = str(exc)
            await trio.sleep(0.05)
        raise Fail(f"the server did not accept a session within {self.target.ready_timeout:g}s after the command: {last}")

    async def _quiet_session(self, device: Device) -> Session:
        """Probe with an unrecorded handshake (failed attempts would only clutter the evidence)."""
        path = self.target.http_path if self.target.http else None
        try:
            client = await Client.connect(self.target.host, self.target.port, http_path=path, trace=Trace(),
                                          label="probe", timeout=self.target.timeout)
        except ConnectFailed as exc:
            raise Fail(str(exc)) from None
        try:
            _, answer = await self.handshake(client, device)
        finally:
            await client.aclose()
        if not isinstance(answer, HelloOk):
            raise Fail(f"AUTH answered by {show(answer)}")
        self.trace.note("the server accepts sessions again")
        return await self.session(device)


class ArmedCommand:
    """A restart, power-cut or restore command started ahead and held until ``fire()``."""

    def __init__(self, ctx: CheckContext, process: trio.Process, command: str, what: str) -> None:
        self.ctx = ctx
        self.process = process
        self.command = command
        self.what = what
        self.fired = False

    async def fire(self) -> None:
        """Let the command run now (once)."""
        if self.fired:
            return
        self.fired = True
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(b"go\n")
            await self.process.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the command ended early: finish() reports how
        self.ctx.trace.note(f"{self.what} command released: {self.command}")

    async def finish(self) -> None:
        """Wait for the command (fired or not) to end; Inconclusive if it fails or hangs."""
        await self.fire()
        limit = self.ctx.target.ready_timeout
        with trio.move_on_after(limit) as scope:
            await self.process.wait()
        if scope.cancelled_caught:
            self.process.kill()
            raise Inconclusive(f"the {self.what} command did not finish within {limit:g}s")
        if self.process.returncode != 0:
            raise Inconclusive(f"the {self.what} command exited with status {self.process.returncode}")
        self.ctx.trace.note(f"{self.what} command done")

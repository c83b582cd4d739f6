"""One protocol session on the server: the answer to every device message, binding-independent.

``SessionHandler.handle(message)`` acts on one message from the device and writes the answers
through the handler's ``write`` function (bytes of whole frames). The raw and the HTTP bindings
feed it the same way; only how bytes move differs. PUSHed changes are staged in the session and
applied by COMMIT in one storage commit, so PUSH_ACK promises nothing and DURABLE only follows
the storage's durable return.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

import trio

from sidekick_testbed.protocol.auth import device_mac, server_mac, verify
from sidekick_testbed.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from sidekick_testbed.protocol.framing import OVERHEAD
from sidekick_testbed.protocol.messages import (
    NONCE_LEN,
    Auth,
    BlobAck,
    BlobChunk,
    BlobQuery,
    Bye,
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
    PullAck,
    PullEnd,
    Push,
    PushAck,
    Records,
)
from sidekick_testbed.protocol.records import Photo, Record
from sidekick_testbed.protocol.session import ServerSession
from sidekick_testbed.protocol.states import SessionState
from sidekick_testbed.protocol.wire import encode_record
from sidekick_testbed.server_stub.session_log import SessionSummary
from sidekick_testbed.server_stub.state import ServerState
from sidekick_testbed.server_stub.storage import (
    AnchorAhead,
    BlobError,
    CommitResult,
    StorageError,
    UnknownAccount,
)

__all__ = ["SessionHandler"]

log = logging.getLogger("sidekick.server")

_DUMMY_KEY = bytes(32)
_RECORDS_OVERHEAD = OVERHEAD + 2
_CHUNK_OVERHEAD = OVERHEAD + 16 + 8 + 8 + 4  # 54: R-BLOB-4
_DURABLE_OVERHEAD = OVERHEAD + 18           # 36: R-LIMIT-5


class _Fatal(Exception):
    """End the session with a fatal ERROR of this code."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class SessionHandler:
    """Server side of one session (see the module docstring)."""

    def __init__(self, server: ServerState, write: Callable[[bytes], Awaitable[None]], *, binding: str,
                 over_capacity: bool = False, address: str | None = None) -> None:
        self.server = server
        self.address = address  # the client's, for the failed-authentication throttle (R-AUTH-9)
        self.storage = server.storage
        self.faults = server.faults
        self.metrics = server.metrics
        self._write = write
        limits = server.limits
        self.session = ServerSession(max_frame=limits.max_frame, max_batch=limits.max_batch,
                                     batch_total=not self.faults.on("no-batch-total"))
        self.summary = SessionSummary(binding, started=trio.current_time())
        self.over_capacity = over_capacity
        self.account: str | None = None
        self.device_id: bytes | None = None
        self._key: bytes | None = None
        self._staged: dict[int, Change] = {}
        self._received_lsn = 0
        self._pull_anchor: int | None = None

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """True once the session is over (BYE or a fatal ERROR either way)."""
        return self.session.state is SessionState.CLOSED

    @property
    def authenticated(self) -> bool:
        """True once HELLO_OK was sent."""
        return self.account is not None

    # ------------------------------------------------------------------ sending

    async def send(self, message: Message) -> None:
        """Encode ``message`` through the session and write it."""
        data = self.session.send(message)
        self.metrics.frames_out[message.TYPE.name] += 1
        self.metrics.bytes_out += len(data)
        if isinstance(message, Error):
            self.metrics.error_sent(message.code)
        await self._write(data)

    async def fail(self, code: ErrorCode, text: str, *, outcome: str | None = None) -> None:
        """Send a fatal ERROR if the session still allows one; the session is then closed."""
        if self.closed:
            return
        self.summary.outcome = outcome or code.name
        try:
            await self.send(Error(code, True, text[:500]))
        except LocalProtocolError:
            pass

    async def refuse(self, exc: RemoteProtocolError) -> None:
        """Answer a protocol violation by the device with the fatal ERROR of its code."""
        await self.fail(exc.code, exc.message)

    # ------------------------------------------------------------------ dispatch

    async def handle(self, message: Message) -> None:
        """Act on one message from the device and send its answers."""
        self.metrics.frames_in[message.TYPE.name] += 1
        try:
            await self._dispatch(message)
        except _Fatal as exc:
            await self.fail(exc.code, exc.text)
        except StorageError as exc:
            log.error("storage failure in session of %s: %s", self.account, exc)
            await self.fail(ErrorCode.STORAGE, "storage failure; nothing since the last DURABLE is durable")
        except UnknownAccount:
            await self.fail(ErrorCode.AUTH_FAILED, "the account no longer exists")

    async def _dispatch(self, message: Message) -> None:
        if isinstance(message, Hello):
            await self._hello(message)
        elif isinstance(message, Auth):
            await self._auth(message)
        elif isinstance(message, Push):
            await self._push(message)
        elif isinstance(message, Commit):
            await self._commit(message)
        elif isinstance(message, Pull):
            await self._pull(message)
        elif isinstance(message, PullAck):
            await self._pull_ack(message)
        elif isinstance(message, BlobQuery):
            await self._blob_query(message)
        elif isinstance(message, BlobChunk):
            await self._blob_chunk(message)
        elif isinstance(message, Ping):
            await self.send(Pong(message.nonce))
        elif isinstance(message, Bye):
            self.summary.outcome = "bye"
        elif isinstance(message, Error):
            if message.fatal:
                self.summary.outcome = f"device error 0x{message.code:04x}"
        # PONG answers a server PING: nothing to do

    # ------------------------------------------------------------------ handshake

    async def _hello(self, hello: Hello) -> None:
        self.summary.account = hello.account
        self.summary.device = hello.device_id.hex()
        if self.server.shutting_down:
            await self.fail(ErrorCode.SHUTTING_DOWN, "the server is stopping; retry later")
            return
        if self.over_capacity:
            self.metrics.refusals["max_sessions"] += 1
            await self.fail(ErrorCode.BUSY, "too many sessions; retry later")
            return
        if self.session.common_version is None:
            self.summary.outcome = "VERSION_UNSUPPORTED"
            await self.send(self.session.version_refusal())
            return
        nonce = self.server.rng.randbytes(NONCE_LEN)
        await self.send(self.session.challenge(self.storage.server_id, nonce))

    async def _auth(self, auth: Auth) -> None:
        account = self.session.account or ""
        device_id = self.session.device_id or b""
        server_nonce = self.session.server_nonce or b""
        if self.server.auth_throttled(account, self.address):  # refused unchecked: a guess cannot succeed
            self.metrics.auth_failures += 1
            await self.fail(ErrorCode.AUTH_FAILED, "authentication failed")
            return
        key = await self.storage.account_key(account)
        server_id = self.storage.server_id
        expected = device_mac(key if key is not None else _DUMMY_KEY, server_nonce=server_nonce,
                              device_nonce=auth.device_nonce, account=account, device_id=device_id,
                              server_id=server_id)
        if not verify(expected, auth.mac) or key is None:
            self.metrics.auth_failures += 1
            self.server.auth_failed(account, self.address)
            await self.fail(ErrorCode.AUTH_FAILED, "authentication failed")
            return
        state = await self.storage.device_state(account, device_id)
        durable_lsn = state.durable_lsn
        if self.faults.on("wrong-watermark"):
            durable_lsn = max(durable_lsn, self.server.received_lsn(account, device_id))
        self.account, self.device_id, self._key = account, device_id, key
        self.summary.durable_lsn = durable_lsn
        proof = server_mac(key, server_nonce=server_nonce, device_nonce=auth.device_nonce, account=account,
                           device_id=device_id, server_id=server_id)
        await self.send(HelloOk(server_id, state.generation, durable_lsn, state.anchor, proof))

    def _who(self) -> tuple[str, bytes]:
        assert self.account is not None and self.device_id is not None
        return self.account, self.device_id

    # ------------------------------------------------------------------ push and commit

    async def _push(self, push: Push) -> None:
        account, device_id = self._who()
        if not push.changes:
            raise _Fatal(ErrorCode.BAD_FIELD, "an empty PUSH (R-MSG-4)")
        for change in push.changes:
            if change.lsn == 0:
                raise _Fatal(ErrorCode.BAD_FIELD, "a change with LSN 0")
            body = change.record.body
            if isinstance(body, Photo) and not change.record.deleted:
                blob = await self.storage.read_blob(account, body.blob_id)
                if blob is None or len(blob) != body.size or hashlib.sha256(blob).digest() != body.sha256:
                    raise _Fatal(ErrorCode.BLOB_INCOMPLETE,
                                 f"photo {change.record.record_id.hex()}: blob {body.blob_id.hex()} "
                                 "is not held completely and intact")
        for change in push.changes:
            self._staged[change.lsn] = change
        self._received_lsn = max(self._received_lsn, push.changes[-1].lsn)
        self.server.note_received(account, device_id, self._received_lsn)
        self.summary.pushed += len(push.changes)
        await self.send(PushAck(push.changes[-1].lsn))

    async def _commit(self, commit: Commit) -> None:
        account, device_id = self._who()
        started = trio.current_time()
        changes = self._take_staged(commit.lsn)
        if changes:
            try:
                result = await self.storage.commit(account, device_id, changes)
            except StorageError as exc:
                if not self.faults.on("durable-despite-storage-error"):
                    raise
                log.error("storage failure in session of %s (ignored): %s", account, exc)
                result = CommitResult(self.storage.generation, commit.lsn, (), ())
            generation, durable_lsn = result.generation, result.durable_lsn
            assigned, conflicts = result.assigned, result.conflicts
        else:
            state = await self.storage.device_state(account, device_id)
            generation, durable_lsn, assigned, conflicts = state.generation, state.durable_lsn, (), ()
        late = self._take_staged(durable_lsn)
        if late:  # staged changes at or below the watermark are duplicates; DURABLE must list them too
            extra = await self.storage.commit(account, device_id, late)
            generation = extra.generation
            assigned = tuple(sorted((*assigned, *extra.assigned), key=lambda a: a.lsn))
            conflicts = (*conflicts, *extra.conflicts)
            changes = [*changes, *late]
        for conflict in conflicts:
            await self.send(conflict)
        cap = max(1, (self.session.max_frame - _DURABLE_OVERHEAD) // 32)
        if len(assigned) > cap:  # report the prefix that fits one frame; the rest is retransmitted
            assigned = assigned[:cap]
            durable_lsn = assigned[-1].lsn
        if self.faults.on("wrong-watermark"):
            durable_lsn = max(durable_lsn, self._received_lsn)
        if self.faults.on("commit-lsn-watermark"):
            durable_lsn = max(durable_lsn, commit.lsn)
        await self.send(Durable(generation, durable_lsn, tuple(assigned)))
        self.metrics.commits += 1
        self.metrics.changes_applied += len(changes)
        self.metrics.conflicts += len(conflicts)
        self.metrics.durable_latency.observe(trio.current_time() - started)
        self.summary.committed += len(changes)
        self.summary.conflicts += len(conflicts)
        self.summary.durable_lsn = max(self.summary.durable_lsn, durable_lsn)

    def _take_staged(self, through: int) -> list[Change]:
        """Remove and return the staged changes with LSN <= ``through``, in LSN order."""
        taken = sorted((c for lsn, c in self._staged.items() if lsn <= through), key=lambda c: c.lsn)
        for change in taken:
            del self._staged[change.lsn]
        return taken

    # ------------------------------------------------------------------ pull

    async def _pull(self, pull: Pull) -> None:
        account, device_id = self._who()
        if pull.max_records == 0:
            raise _Fatal(ErrorCode.BAD_FIELD, "PULL with max_records 0 (R-MSG-1)")
        limit = min(pull.max_records, self.server.limits.pull_records)
        try:
            page = await self.storage.pull(account, pull.anchor, limit)
        except AnchorAhead as exc:
            await self.send(Error(ErrorCode.BAD_ANCHOR, False, str(exc)))
            return
        budget = self.session.max_frame - _RECORDS_OVERHEAD
        batch: list[Record] = []
        size = 0
        for record in page.records:
            need = len(encode_record(record))
            if batch and (len(batch) >= self.session.max_batch or size + need > budget):
                await self._send_records(account, batch)
                batch, size = [], 0
            if need > budget:
                raise _Fatal(ErrorCode.FRAME_TOO_LARGE, f"record {record.record_id.hex()} does not fit a frame")
            batch.append(record)
            size += need
        if batch:
            await self._send_records(account, batch)
        self.summary.pulled += len(page.records)
        self._pull_anchor = page.anchor
        await self.send(PullEnd(page.anchor, page.more))
        if self.faults.on("ignore-pull-ack"):
            await self.storage.ack_pull(account, device_id, page.anchor)

    async def _send_records(self, account: str, records: list[Record]) -> None:
        await self.send(Records(tuple(records)))
        chunk = self.session.max_frame - _CHUNK_OVERHEAD
        for record in records:
            body = record.body
            if not isinstance(body, Photo) or record.deleted:
                continue
            data = await self.storage.read_blob(account, body.blob_id)
            if data is None:
                raise _Fatal(ErrorCode.INTERNAL, f"blob {body.blob_id.hex()} of a photo head is missing")
            offset = 0
            while True:
                piece = data[offset:offset + chunk]
                await self.send(BlobChunk(body.blob_id, offset, len(data), piece))
                offset += len(piece)
                if offset >= len(data):
                    break

    async def _pull_ack(self, ack: PullAck) -> None:
        account, device_id = self._who()
        if ack.anchor != self._pull_anchor:
            raise _Fatal(ErrorCode.BAD_FIELD, f"PULL_ACK anchor {ack.anchor} differs from PULL_END's "
                                              f"{self._pull_anchor}")
        self._pull_anchor = None
        if not self.faults.on("ignore-pull-ack"):
            await self.storage.ack_pull(account, device_id, ack.anchor)

    # ------------------------------------------------------------------ blobs

    async def _blob_query(self, query: BlobQuery) -> None:
        account, _ = self._who()
        state = await self.storage.blob_state(account, query.blob_id)
        await self.send(BlobAck(query.blob_id, state.have))

    async def _blob_chunk(self, chunk: BlobChunk) -> None:
        account, _ = self._who()
        if chunk.total > self.server.limits.max_blob:
            self.metrics.refusals["max_blob"] += 1
            raise _Fatal(ErrorCode.BUDGET_EXCEEDED, f"blob of {chunk.total} bytes exceeds the server's limit")
        if chunk.offset + len(chunk.data) > chunk.total:
            raise _Fatal(ErrorCode.BAD_FIELD, "chunk ends beyond the blob's total")
        try:
            have = await self.storage.write_blob(account, chunk.blob_id, chunk.offset, chunk.total, chunk.data)
        except BlobError as exc:
            if exc.offset_mismatch:
                await self.send(Error(ErrorCode.BLOB_OFFSET, False, str(exc)))
                return
            raise _Fatal(ErrorCode.BAD_FIELD, str(exc)) from None
        await self.send(BlobAck(chunk.blob_id, have))

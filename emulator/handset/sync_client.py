"""The handset's sync client: one Trio task driving a ``DeviceSession`` over a ``Channel``.

It syncs any ``SyncDevice`` (the store, RNG and hooks it needs; ``Handset`` is one), returns a
``SyncReport`` (both in ``sync_contract``) and raises the errors of ``sync_errors``; all are
re-exported here.

One sync, in order (docs/HANDSET.md explains the reasons):

1. HELLO, CHALLENGE, AUTH, HELLO_OK; the server's MAC is checked.
2. Regression check against what the store trusts: another server id or generation, or a durable
   watermark or anchor below what the device was given before, is a server regression. It is
   logged loudly, every head is marked dirty with a fresh LSN, the anchor is reset to 0 and the
   whole local copy is pushed (recovery sync). Nothing local is ever deleted because the server
   lacks it. First contact (no server id stored) is not a regression.
3. Photo blobs of pending photos are uploaded (BLOB_QUERY gives the resume offset, then BLOB_CHUNKs).
4. PUSH the pending heads in LSN order, in batches of at most ``max_batch`` that fit ``max_frame``;
   PUSH_ACK means received only. Then COMMIT; CONFLICT notices are collected; DURABLE marks clean
   the pushed versions through the LSN it names, only if its generation is this session's.
5. PULL from the stored anchor; RECORDS and BLOB_CHUNKs are committed to flash (blobs, then the
   records and the new anchor in one commit), then PULL_ACK; repeated while the server has more.
   A PING after the last PULL_ACK confirms the server has processed it.
6. BYE.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import trio

from sidekick_testbed.emulator.handset.sync_contract import SyncDevice, SyncReport
from sidekick_testbed.emulator.handset.sync_errors import (
    AuthRefused,
    ConnectionLost,
    DeviceIdRetired,
    GenerationChanged,
    PeerProtocolError,
    ServerError,
    ServerNotAuthentic,
    SyncError,
    SyncFailed,
    SyncTimeout,
)
from sidekick_testbed.emulator.handset.transport import Channel, Connector, TransportError, TransportTimeout
from sidekick_testbed.protocol.auth import device_mac, server_mac, verify
from sidekick_testbed.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME, OVERHEAD
from sidekick_testbed.protocol.messages import (
    NONCE_LEN,
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
from sidekick_testbed.protocol.session import (
    CONNECTION_CLOSED,
    NEED_DATA,
    ConnectionClosed,
    DeviceSession,
    NeedData,
)

if TYPE_CHECKING:
    from sidekick_testbed.emulator.store import RecordStore, StoredVersion

__all__ = [
    "AuthRefused",
    "ConnectionLost",
    "GenerationChanged",
    "PeerProtocolError",
    "ServerError",
    "ServerNotAuthentic",
    "SyncDevice",
    "SyncError",
    "SyncFailed",
    "SyncReport",
    "SyncTimeout",
    "run_sync",
]

log = logging.getLogger("sidekick.sync")
_M = TypeVar("_M", bound=Message)

PULL_MAX_RECORDS = 1024
"""Records asked for per PULL; the server may send fewer and say ``more``."""
MAX_BLOB = 64 << 20
"""Largest photo blob the device accepts in a pull (bytes)."""
DEFAULT_TIMEOUT = 30.0
"""Seconds (Trio clock) to wait for any one answer from the server."""
_CHUNK_OVERHEAD = OVERHEAD + 16 + 8 + 8 + 4 + 64  # frame + blob id, offset, total, length; margin


# ---------------------------------------------------------------------------------------- driver


class _Driver:
    """One sync attempt over one connection."""

    def __init__(self, device: SyncDevice, channel: Channel, *, timeout: float, max_frame: int) -> None:
        self.device = device
        self.mutants = device.mutants
        self.channel = channel
        self.timeout = timeout
        self.session = DeviceSession(max_frame=max_frame)
        self.report = SyncReport()
        self.generation = 0
        self.prune_first = False
        self.told_durable = 0
        self.durable_through = 0
        """The highest LSN a DURABLE of this session covered among the versions it pushed."""
        self.assigned: list[tuple[int, bytes, int]] = []
        """(lsn, record id, server version) from this session's DURABLEs, not yet persisted."""
        """The highest durable_lsn a DURABLE named in this session (persisted after the pushes)."""
        self.echoes: set[tuple[bytes, int]] = set()
        """(record id, server version) of this session's own changes made durable: when the pull
        brings them back, the device already holds exactly that version."""

    @property
    def store(self) -> RecordStore:
        """The device's store, looked up on every use: after a power cut it raises PoweredOff."""
        return self.device.store

    # -- messages

    async def send(self, message: Message) -> None:
        await self.transmit(message, self.session.send(message))

    async def transmit(self, message: Message, data: bytes) -> None:
        """Write the frame ``data`` the session produced for ``message``."""
        self._observe("sent", message)
        self.report.frames_sent += 1
        self.report.bytes_sent += len(data)
        try:
            await self.channel.send_all(data, trio.current_time() + self.timeout)
        except TransportTimeout:
            raise SyncTimeout(f"the server took or answered nothing within {self.timeout:g} s") from None
        except TransportError as exc:
            raise ConnectionLost(str(exc)) from exc

    async def receive(self) -> Message:
        """The next message from the server; answers server PINGs itself."""
        while True:
            try:
                event = self.session.next_event()
            except RemoteProtocolError as exc:
                await self._refuse(exc)
                raise PeerProtocolError(exc) from exc
            if event is NEED_DATA:
                try:
                    data = await self.channel.receive_some(trio.current_time() + self.timeout)
                except TransportTimeout:
                    raise SyncTimeout(f"no answer from the server within {self.timeout:g} s") from None
                except TransportError as exc:
                    raise ConnectionLost(str(exc)) from exc
                self.report.bytes_received += len(data)
                self.session.receive_data(data)
                continue
            if event is CONNECTION_CLOSED:
                raise ConnectionLost("the server closed the connection mid-sync")
            assert not isinstance(event, NeedData | ConnectionClosed)
            self.report.frames_received += 1
            self._observe("received", event)
            if isinstance(event, Ping):
                await self.send(Pong(event.nonce))
                continue
            if isinstance(event, Error):
                cls = AuthRefused if event.code == ErrorCode.AUTH_FAILED else ServerError
                raise cls(event.code, event.fatal, event.text)
            return event

    async def expect(self, kind: type[_M]) -> _M:
        message = await self.receive()
        if not isinstance(message, kind):  # the session's table makes this unreachable
            raise PeerProtocolError(RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"expected {kind.__name__}, got {type(message).__name__}"))
        return message

    async def _refuse(self, exc: RemoteProtocolError) -> None:
        await self._fatal(exc.code, exc.message[:200])

    def _observe(self, direction: str, message: Message) -> None:
        self.device.on_sync_message(direction, message)

    # -- the sync

    async def run(self) -> SyncReport:
        hello_ok = await self.handshake()
        self.check_regression(hello_ok)
        for _ in range(3):
            if self.prune_first:
                self.prune_first = False
                await self.pull_all(prune=True)
            await self.push_all()
            if await self.pull_all():
                break
        else:
            raise SyncError("the server kept showing regressions within one session")
        await self.send(Bye("sync complete"))
        meta = self.store.meta
        self.report.generation = meta.generation
        self.report.durable_lsn = meta.durable_lsn
        self.report.anchor = meta.anchor
        return self.report

    async def handshake(self) -> HelloOk:
        meta = self.store.meta
        await self.send(self.session.hello(meta.account, meta.device_id))
        challenge = await self.expect(Challenge)
        device_nonce = self.device.rng.randbytes(NONCE_LEN)
        mac = device_mac(meta.key, server_nonce=challenge.server_nonce, device_nonce=device_nonce,
                         account=meta.account, device_id=meta.device_id, server_id=challenge.server_id)
        await self.send(Auth(device_nonce, mac))
        hello_ok = await self.expect(HelloOk)
        expected = server_mac(meta.key, server_nonce=challenge.server_nonce, device_nonce=device_nonce,
                              account=meta.account, device_id=meta.device_id, server_id=challenge.server_id)
        if not verify(expected, hello_ok.server_mac):
            raise ServerNotAuthentic("the server's HELLO_OK does not prove it knows the device key")
        self.generation = hello_ok.generation
        return hello_ok

    def check_regression(self, hello_ok: HelloOk) -> None:
        """Compare HELLO_OK with what the store trusts; run the recovery marking if it regressed."""
        meta = self.store.meta
        reason: str | None = None
        if not meta.server_id:
            if hello_ok.durable_lsn >= meta.next_lsn:
                # R-IDEM-4: this device id has history on the server beyond our LSN counter (e.g.
                # after a forced factory reset). The server may also hold received, not yet durable
                # changes above its watermark, so no LSN we issue is safe under this id: retire it
                # and come back as a new device on the next attempt.
                new_id = self.device.rng.randbytes(len(meta.device_id))
                log.warning("%s: device id %s already has LSNs through %d on the server (ours end at "
                            "%d); taking the new device id %s", self.device.name or meta.device_id.hex(),
                            meta.device_id.hex(), hello_ok.durable_lsn, meta.next_lsn - 1, new_id.hex())
                self.store.set_meta(device_id=new_id)
                raise DeviceIdRetired(f"device id {meta.device_id.hex()} retired; reconnecting as "
                                      f"{new_id.hex()}")
            self.store.set_meta(server_id=hello_ok.server_id, generation=hello_ok.generation,
                                durable_lsn=hello_ok.durable_lsn, anchor=meta.anchor,
                                server_anchor=hello_ok.anchor)
            return
        if hello_ok.server_id != meta.server_id:
            reason = f"server id changed from {meta.server_id.hex()} to {hello_ok.server_id.hex()}"
        elif hello_ok.generation != meta.generation:
            reason = f"server generation changed from {meta.generation:#x} to {hello_ok.generation:#x}"
        elif hello_ok.durable_lsn < meta.durable_lsn:
            reason = (f"server's durable watermark for this device went back from {meta.durable_lsn} "
                      f"to {hello_ok.durable_lsn} in the same generation")
        elif hello_ok.anchor < meta.server_anchor:
            # Compared with what the server confirmed, not with our own anchor: a PULL_ACK lost with
            # its connection leaves the server legitimately behind us (R-GEN-4).
            reason = (f"server's pull anchor for this device went back from {meta.server_anchor} "
                      f"to {hello_ok.anchor} in the same generation")
        elif hello_ok.durable_lsn >= meta.next_lsn:
            # R-IDEM-9: this id's history on the server is not ours; no LSN we issue under it is safe.
            new_id = self.device.rng.randbytes(len(meta.device_id))
            log.warning("%s: the server claims LSN %d of device id %s durable, above any this device issued "
                        "(%d); recovery sync as the new device id %s", self.device.name or meta.device_id.hex(),
                        hello_ok.durable_lsn, meta.device_id.hex(), meta.next_lsn - 1, new_id.hex())
            self.store.set_meta(device_id=new_id, durable_lsn=0, server_anchor=0)
            self.recover(f"server claims LSN {hello_ok.durable_lsn} durable, above any this device issued "
                         f"({meta.next_lsn - 1})", HelloOk(meta.server_id, meta.generation, 0, 0, b""))
            raise DeviceIdRetired(f"device id {meta.device_id.hex()} retired; reconnecting as {new_id.hex()}")
        if reason is None:
            if hello_ok.durable_lsn > meta.durable_lsn or hello_ok.anchor > meta.server_anchor:
                self.store.set_meta(durable_lsn=max(meta.durable_lsn, hello_ok.durable_lsn),
                                    server_anchor=max(meta.server_anchor, hello_ok.anchor))
            return
        if self.mutants.on("ignore-generation-change"):
            self.store.set_meta(server_id=hello_ok.server_id, generation=hello_ok.generation,
                                durable_lsn=hello_ok.durable_lsn)
            return
        self.recover(reason, hello_ok)

    def recover(self, reason: str, hello_ok: HelloOk) -> None:
        """Recovery marking: all dirty (fresh LSNs) first, then the new trust; a power cut between
        the two commits repeats the detection on the next sync, never skips it."""
        self.report.regression = reason
        count = len(self.store)
        log.warning("%s: SERVER REGRESSION DETECTED: %s; marking all %d local records dirty and pushing "
                    "them again (recovery sync); no local record is deleted",
                    self.device.name or self.store.meta.device_id.hex(), reason, count)
        self.device.on_sync_regression(reason)
        meta = self.store.meta
        if hello_ok.durable_lsn >= meta.next_lsn:
            self.store.set_meta(next_lsn=hello_ok.durable_lsn + 1)
        self.store.mark_all_dirty()
        self.prune_first = self.mutants.on("delete-local-missing-on-server")
        anchor = meta.anchor if self.mutants.on("keep-anchor-after-restore") else 0
        self.store.set_meta(server_id=hello_ok.server_id, generation=hello_ok.generation,
                            durable_lsn=hello_ok.durable_lsn, anchor=anchor, server_anchor=hello_ok.anchor)

    # -- push

    async def push_all(self) -> None:
        pending = self.store.pending()
        if not pending:
            return
        pending = await self.upload_blobs(pending)
        if not pending:
            return
        queue = deque(self._batches(pending))
        acked = 0
        try:
            while queue:
                # R-LIMIT-4: at most max_batch changes between two COMMITs: each batch is committed.
                batch = queue.popleft()
                try:
                    frame = self.session.send(Push(tuple(batch)))
                except LocalProtocolError as exc:
                    if exc.code != ErrorCode.FRAME_TOO_LARGE:
                        raise
                    if len(batch) == 1:
                        log.warning("record %s does not fit in a %d-byte frame; it stays on this device, "
                                    "not synced", batch[0].record.record_id.hex(), self.session.max_frame)
                        continue
                    half = len(batch) // 2
                    queue.extendleft((batch[half:], batch[:half]))
                    continue
                await self.transmit(Push(tuple(batch)), frame)
                ack = await self.expect(PushAck)
                self.report.pushed += len(batch)
                last_lsn = batch[-1].lsn
                if self.mutants.on("mark-clean-on-push-ack"):
                    self.store.mark_pushed(ack.received_lsn)
                    self.store.mark_durable(self.generation, ack.received_lsn, ())
                else:
                    acked = max(acked, min(ack.received_lsn, last_lsn))
                await self.send(Commit(last_lsn))
                durable_lsn = await self.await_durable(last_lsn)
                self.report.durable += sum(1 for change in batch if change.lsn <= durable_lsn)
        except GenerationChanged:
            raise
        except SyncError:
            self.record_receipts(acked)    # what the server confirmed before the failure
            raise
        self.record_receipts(acked)

    def record_receipts(self, acked: int) -> None:
        """Persist the receipts of this session's pushes: PUSHED through ``acked``, DURABLE through
        what the DURABLEs covered, the durable watermark. Deferred to the end of the pushes, in one
        flash commit; a cut before it only means the same versions are pushed again."""
        durable_through = self.durable_through
        assigned = self.assigned if durable_through else []
        self.store.record_receipts(acked, self.generation, durable_through, assigned, self.told_durable)
        if durable_through:
            self.echoes.update((rid, version) for lsn, rid, version in assigned if lsn <= durable_through)
            self.durable_through, self.assigned = 0, []

    async def await_durable(self, pushed_through: int) -> int:
        """CONFLICT notices, then DURABLE; returns the LSN it names."""
        while True:
            message = await self.receive()
            if isinstance(message, Conflict):
                self.report.conflicts.append(message)
                log.info("conflict on record %s: the overwritten version is kept as copy %s",
                         message.record_id.hex(), message.copy_id.hex())
                continue
            if isinstance(message, Durable):
                await self.on_durable(message, pushed_through)
                return message.durable_lsn
            raise PeerProtocolError(RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"{type(message).__name__} during COMMIT"))

    async def on_durable(self, durable: Durable, pushed_through: int) -> None:
        """Mark clean what this session pushed, through the LSN DURABLE names (R-DUR-7)."""
        if durable.generation != self.generation:
            # R-DUR-8: mark nothing, treat as a regression, end the session with a fatal error.
            reason = (f"DURABLE names generation {durable.generation:#x}, this session began in "
                      f"{self.generation:#x}")
            await self._fatal(ErrorCode.BAD_FIELD, "DURABLE of another generation")
            meta = self.store.meta
            self.recover(reason, HelloOk(meta.server_id, durable.generation, 0, 0, b""))
            raise GenerationChanged(reason)
        self.assigned.extend((a.lsn, a.record_id, a.version) for a in durable.assigned)
        self.durable_through = max(self.durable_through, min(durable.durable_lsn, pushed_through))
        self.told_durable = max(self.told_durable, durable.durable_lsn)

    async def _fatal(self, code: ErrorCode, text: str) -> None:
        """Send a fatal ERROR if the session still allows it (best effort; ``send`` bounds it in
        time and a timeout is a SyncError)."""
        try:
            await self.send(Error(code, True, text))
        except (SyncError, LocalProtocolError):
            pass

    def _batches(self, pending: Sequence[StoredVersion]) -> list[list[Change]]:
        """Changes in LSN order, in runs of at most ``max_batch`` (``push_all`` halves a run whose
        frame would exceed ``max_frame``)."""
        max_batch = max(1, self.session.max_batch)
        # Until a pull has completed in the trusted generation (anchor 0: first contact, or after a
        # recovery marking), base versions may be numbers from a lost generation that could equal
        # an unrelated head's version now; base 0 makes the server keep any head it replaces as a
        # conflict copy instead of superseding it silently.
        trust_bases = self.store.meta.anchor > 0
        changes = [Change(v.lsn, v.base_version if trust_bases else 0, v.record) for v in pending]
        return [changes[i:i + max_batch] for i in range(0, len(changes), max_batch)]

    async def upload_blobs(self, pending: list[StoredVersion]) -> list[StoredVersion]:
        """Upload the blob of every pending live photo; returns the versions that can be pushed
        (a photo whose blob is missing on this device stays pending, with a warning)."""
        ready: list[StoredVersion] = []
        for version in pending:
            body = version.record.body
            if isinstance(body, Photo) and not version.record.deleted:
                if not self.store.has_blob(body.blob_id):
                    log.warning("photo %s: blob %s missing on flash; not pushed",
                                version.record.record_id.hex(), body.blob_id.hex())
                    continue
                await self.upload_blob(body.blob_id, self.store.read_blob(body.blob_id))
            ready.append(version)
        return ready

    async def upload_blob(self, blob_id: bytes, data: bytes) -> None:
        if not data:  # R-BLOB-12: BLOB_QUERY cannot tell "unknown" from "whole"; the one empty chunk can
            await self.send(BlobChunk(blob_id, 0, 0, b""))
            await self._blob_have(blob_id)
            return
        await self.send(BlobQuery(blob_id))
        have = await self._blob_have(blob_id)
        chunk = max(256, self.session.max_frame - _CHUNK_OVERHEAD)
        for _ in range(len(data) // chunk + 8):
            if have >= len(data):
                return
            piece = data[have:have + chunk]
            await self.send(BlobChunk(blob_id, have, len(data), piece))
            self.report.blob_bytes_sent += len(piece)
            have = await self._blob_have(blob_id)
        if have < len(data):
            raise ConnectionLost(f"blob {blob_id.hex()}: the server did not take the chunks")

    async def _blob_have(self, blob_id: bytes) -> int:
        try:
            ack = await self.expect(BlobAck)
        except ServerError as exc:
            if exc.code != ErrorCode.BLOB_OFFSET or exc.fatal:
                raise
            await self.send(BlobQuery(blob_id))
            ack = await self.expect(BlobAck)
        return ack.have

    # -- pull

    async def pull_all(self, *, prune: bool = False) -> bool:
        """Pull until the server has nothing more; False if the pull revealed a regression (the
        recovery marking is done and the caller pushes again)."""
        pulled_ids: set[bytes] = set()
        while True:
            anchor = self.store.meta.anchor
            await self.send(Pull(anchor, PULL_MAX_RECORDS))
            records: list[Record] = []
            blobs: dict[bytes, bytearray] = {}
            totals: dict[bytes, int] = {}
            try:
                while True:
                    message = await self.receive()
                    if isinstance(message, Records):
                        records.extend(message.records)
                        if len(records) > PULL_MAX_RECORDS:
                            await self._fatal(ErrorCode.BATCH_TOO_LARGE, "more records than PULL asked for")
                            raise PeerProtocolError(RemoteProtocolError(
                                ErrorCode.BATCH_TOO_LARGE, f"pull sent more than {PULL_MAX_RECORDS} records"))
                    elif isinstance(message, BlobChunk):
                        if not self._take_chunk(message, blobs, totals):
                            await self._fatal(ErrorCode.BAD_FIELD, "blob chunk out of order")
                            raise PeerProtocolError(RemoteProtocolError(
                                ErrorCode.BAD_FIELD, f"pulled blob {message.blob_id.hex()}: chunk at "
                                f"{message.offset} of {message.total} out of order"))
                    elif isinstance(message, PullEnd):
                        break
                    else:
                        raise PeerProtocolError(RemoteProtocolError(
                            ErrorCode.UNEXPECTED_MESSAGE, f"{type(message).__name__} during PULL"))
            except ServerError as exc:
                if exc.code != ErrorCode.BAD_ANCHOR or exc.fatal:
                    raise
                self.recover(f"server refused pull anchor {anchor} ({exc.text})", self._hello_ok_now())
                return False
            if message.anchor < anchor:
                self.recover(f"server answered a pull from {anchor} with anchor {message.anchor}",
                             self._hello_ok_now())
                await self.send(Error(ErrorCode.BAD_ANCHOR, False, "PULL_END anchor below the PULL's"))
                return False
            outside = [r for r in records if not anchor < r.version <= message.anchor]
            if outside:
                await self.send(Error(ErrorCode.BAD_ANCHOR, False, "records outside the pull's range"))
                raise PeerProtocolError(RemoteProtocolError(
                    ErrorCode.BAD_ANCHOR, f"pulled version {outside[0].version} outside ({anchor}, "
                    f"{message.anchor}]"))
            bad_blob = self._check_blobs(records, blobs)
            if bad_blob:
                await self._fatal(ErrorCode.BAD_FIELD, f"blob {bad_blob.hex()} does not match its photo")
                raise PeerProtocolError(RemoteProtocolError(
                    ErrorCode.BAD_FIELD, f"pulled photo blob {bad_blob.hex()} is incomplete or corrupt"))
            early_ack = self.mutants.on("pull-ack-before-flash")
            if early_ack:
                await self.send(PullAck(message.anchor))
            for blob_id, data in blobs.items():
                if not self.store.has_blob(blob_id):
                    self.store.write_blob(blob_id, bytes(data))
                    self.report.blob_bytes_received += len(data)
            fresh = [r for r in records if (r.record_id, r.version) not in self.echoes]
            self.store.apply_pulled(fresh, message.anchor)
            self.report.pulled += len(records)
            if prune:
                pulled_ids.update(record.record_id for record in records)
                if not message.more:
                    self._delete_missing(pulled_ids)
            if not early_ack:
                await self.send(PullAck(message.anchor))
            if not message.more:
                if self.store.meta.server_anchor != message.anchor:
                    # PONG comes after our PULL_ACK is processed: the server then holds the anchor.
                    # An anchor the server already confirmed needs no round trip (an idle poll).
                    await self.send(Ping(self.device.rng.getrandbits(63)))
                    await self.expect(Pong)
                    self.store.set_meta(server_anchor=message.anchor)
                return True

    def _hello_ok_now(self) -> HelloOk:
        """The trust to adopt when a regression shows mid-session: this session's server."""
        meta = self.store.meta
        return HelloOk(meta.server_id, self.generation, meta.durable_lsn, 0, b"")

    @staticmethod
    def _take_chunk(chunk: BlobChunk, blobs: dict[bytes, bytearray], totals: dict[bytes, int]) -> bool:
        """Append a pulled chunk; False if it does not continue its blob."""
        buf = blobs.setdefault(chunk.blob_id, bytearray())
        if totals.setdefault(chunk.blob_id, chunk.total) != chunk.total or chunk.total > MAX_BLOB:
            return False
        end = chunk.offset + len(chunk.data)
        if len(buf) == chunk.total and end <= chunk.total:
            # The blob again, already complete in this pull: two photos (a record and its conflict
            # copy) may share one blob, and the server sends it for each (PROTOCOL.md section 14).
            return bytes(buf[chunk.offset:end]) == chunk.data
        if chunk.offset != len(buf) or end > chunk.total:
            return False
        buf.extend(chunk.data)
        return True

    def _check_blobs(self, records: Sequence[Record], blobs: dict[bytes, bytearray]) -> bytes | None:
        """The blob id of a pulled live photo whose bytes are neither here nor on flash, or None."""
        for record in records:
            body = record.body
            if not isinstance(body, Photo) or record.deleted:
                continue
            data = blobs.get(body.blob_id)
            if data is None:
                if not self.store.has_blob(body.blob_id):
                    return body.blob_id
                continue
            if len(data) != body.size or hashlib.sha256(data).digest() != body.sha256:
                return body.blob_id
        return None

    def _delete_missing(self, on_server: set[bytes]) -> None:
        """Mutant delete-local-missing-on-server: the 2009 'server is the truth' reconciliation."""
        for version in self.store.records():
            record = version.record
            if record.record_id not in on_server and not record.deleted:
                self.store.write_local(record.record_id, record.body, deleted=True)


async def run_sync(device: SyncDevice, connect: Connector, *, timeout: float = DEFAULT_TIMEOUT,
                   max_frame: int = DEFAULT_MAX_FRAME) -> SyncReport:
    """One sync attempt: connect, run the session, close the connection whatever happens."""
    try:
        with trio.fail_after(timeout):
            channel = await connect()
    except trio.TooSlowError:
        raise SyncTimeout(f"connecting took longer than {timeout:g} s") from None
    except TransportError as exc:
        raise ConnectionLost(str(exc)) from exc
    try:
        driver = _Driver(device, channel, timeout=timeout, max_frame=max_frame)
        return await driver.run()
    finally:
        with trio.CancelScope(shield=True):
            await channel.aclose()

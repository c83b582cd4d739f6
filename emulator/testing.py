"""Tools for testing sync code against the reference server, in memory (as ``trio.testing`` is for Trio).

``MemoryWorld`` runs real handsets (``emulator.handset.Handset``) against a reference server on the
simulated storage, over in-memory streams (raw or HTTP binding); ``device_heads``, ``device_bodies``,
``live_bodies`` and ``conflict_copies`` read what a handset or the server holds::

    import trio
    from sidekick_testbed.emulator.testing import MemoryWorld, device_bodies
    from sidekick_testbed.protocol.records import Note

    async def main() -> None:
        world = MemoryWorld(seed=1)
        phone, desktop = world.handset("phone"), world.handset("desktop")
        phone.add(Note("groceries", "milk"))
        async with world.running():
            await world.sync(phone)
            await world.sync(desktop, http=True)
        assert device_bodies(desktop) == device_bodies(phone)

    trio.run(main)

``ScriptedDevice`` drives a ``DeviceSession`` step by step over a raw Trio stream or the HTTP
binding (hello/auth, push, commit, pull, blobs, bye), to make a server do exactly one thing at a
time. Each step sends one request and returns the server's answer; an ERROR from the server raises
``ServerRefused``. Timeouts use the Trio clock, so tests run it under ``MockClock``::

    async with trio.open_nursery() as nursery:
        device = await open_memory_device(server, nursery, account="alice", device_id=bytes(16),
                                          key=key, rng=random.Random(0))
        await device.hello()
        conflicts, durable = await device.push_commit([note_change(device.rng, 1, "first")])
        await device.bye()
        nursery.cancel_scope.cancel()
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio.testing

from sidekick_testbed.emulator.flash import Geometry, NandFlash
from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.handset.sync_client import SyncReport
from sidekick_testbed.emulator.handset.transport import Connector, http_memory_connector, memory_connector
from sidekick_testbed.emulator.mutants import NO_MUTANTS, Mutants
from sidekick_testbed.protocol.auth import device_mac, server_mac, verify
from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME
from sidekick_testbed.protocol.http_client import HttpClientBinding, HttpResponse
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
from sidekick_testbed.protocol.records import Note, Record, RecordBody
from sidekick_testbed.protocol.session import CONNECTION_CLOSED, NEED_DATA, DeviceSession
from sidekick_testbed.server_stub.faults import FaultSet
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage

__all__ = [
    "ACCOUNT",
    "KEY",
    "HttpStream",
    "MemoryWorld",
    "PullResult",
    "ScriptedDevice",
    "ServerClosed",
    "ServerRefused",
    "conflict_copies",
    "device_bodies",
    "device_heads",
    "live_bodies",
    "note_change",
    "open_memory_device",
]

ACCOUNT = "alice"
"""The account ``MemoryWorld`` provisions unless told otherwise."""
KEY = bytes(range(32))
"""``ACCOUNT``'s device key."""


class ServerRefused(Exception):
    """The server answered with ERROR."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"server ERROR 0x{error.code:04x} fatal={error.fatal}: {error.text}")
        self.error = error


class ServerClosed(Exception):
    """The connection ended before the answer came."""


class HttpStream:
    """Frames over HTTP POSTs: ``send_all`` POSTs, ``receive_some`` returns the answer bodies."""

    def __init__(self, stream: trio.abc.Stream, host: str = "sidekick.test") -> None:
        self.stream = stream
        self.binding = HttpClientBinding(host)
        self.token: str | None = None
        self.inbox: list[bytes] = []
        self.last_status = 0

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(self.binding.request(data, self.token))
        while True:
            response = self.binding.next_response()
            if isinstance(response, HttpResponse):
                break
            if response is CONNECTION_CLOSED:
                raise ServerClosed("HTTP connection closed")
            self.binding.receive_data(bytes(await self.stream.receive_some(65536)))
        self.last_status = response.status
        if response.status != 200:
            raise ServerClosed(f"HTTP status {response.status}: {response.body[:100]!r}")
        self.token = response.session_token or self.token
        if response.body:
            self.inbox.append(response.body)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self.inbox:
            raise ServerClosed("no answer queued on the HTTP binding")
        return self.inbox.pop(0)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


@dataclass
class PullResult:
    """What one pull brought."""

    records: list[Record] = field(default_factory=list)
    blobs: dict[bytes, bytes] = field(default_factory=dict)
    end: PullEnd | None = None


def note_change(rng: random.Random, lsn: int, title: str, *, record_id: bytes | None = None,
                base_version: int = 0, deleted: bool = False) -> Change:
    """A NOTE change for tests."""
    rid = record_id if record_id is not None else rng.randbytes(16)
    return Change(lsn, base_version, Record(rid, 0, deleted, Note(title, "text of " + title)))


class ScriptedDevice:
    """One scripted session (see the module docstring)."""

    def __init__(self, stream: trio.abc.Stream | HttpStream, *, account: str, device_id: bytes, key: bytes,
                 rng: random.Random, max_frame: int = DEFAULT_MAX_FRAME, timeout: float = 30.0) -> None:
        self.stream = stream
        self.account = account
        self.device_id = device_id
        self.key = key
        self.rng = rng
        self.timeout = timeout
        self.session = DeviceSession(max_frame=max_frame)
        self.hello_ok: HelloOk | None = None
        self.received: list[Message] = []

    async def send(self, message: Message) -> None:
        """Send one message."""
        await self.stream.send_all(self.session.send(message))

    async def receive(self) -> Message:
        """The next message from the server (answers a server PING itself)."""
        while True:
            event = self.session.next_event()
            if event is NEED_DATA:
                with trio.fail_after(self.timeout):
                    data = await self.stream.receive_some(65536)
                self.session.receive_data(bytes(data))
                continue
            if event is CONNECTION_CLOSED:
                raise ServerClosed("the server closed the connection")
            assert not isinstance(event, type(NEED_DATA) | type(CONNECTION_CLOSED))
            self.received.append(event)
            if isinstance(event, Ping):
                await self.send(Pong(event.nonce))
                continue
            if isinstance(event, Error):
                raise ServerRefused(event)
            return event

    async def hello(self) -> HelloOk:
        """HELLO, CHALLENGE, AUTH, HELLO_OK; checks the server's MAC."""
        await self.send(self.session.hello(self.account, self.device_id))
        challenge = await self.receive()
        assert isinstance(challenge, Challenge)
        nonce = self.rng.randbytes(NONCE_LEN)
        transcript = {"server_nonce": challenge.server_nonce, "device_nonce": nonce, "account": self.account,
                      "device_id": self.device_id, "server_id": challenge.server_id}
        await self.send(Auth(nonce, device_mac(self.key, **transcript)))
        hello_ok = await self.receive()
        assert isinstance(hello_ok, HelloOk)
        if not verify(server_mac(self.key, **transcript), hello_ok.server_mac):
            raise AssertionError("server MAC does not verify")
        self.hello_ok = hello_ok
        return hello_ok

    async def push(self, changes: list[Change] | tuple[Change, ...]) -> PushAck:
        """PUSH -> PUSH_ACK."""
        await self.send(Push(tuple(changes)))
        ack = await self.receive()
        assert isinstance(ack, PushAck)
        return ack

    async def commit(self, lsn: int) -> tuple[list[Conflict], Durable]:
        """COMMIT -> CONFLICT* DURABLE."""
        await self.send(Commit(lsn))
        conflicts: list[Conflict] = []
        while True:
            message = await self.receive()
            if isinstance(message, Conflict):
                conflicts.append(message)
                continue
            assert isinstance(message, Durable)
            return conflicts, message

    async def push_commit(self, changes: list[Change]) -> tuple[list[Conflict], Durable]:
        """PUSH then COMMIT of the last LSN."""
        await self.push(changes)
        return await self.commit(changes[-1].lsn)

    async def pull(self, anchor: int = 0, max_records: int = 1024, *, ack: bool = True) -> PullResult:
        """PULL -> (RECORDS | BLOB_CHUNK)* PULL_END, then PULL_ACK unless ``ack`` is False."""
        await self.send(Pull(anchor, max_records))
        result = PullResult()
        parts: dict[bytes, bytearray] = {}
        while True:
            message = await self.receive()
            if isinstance(message, Records):
                result.records.extend(message.records)
            elif isinstance(message, BlobChunk):
                buf = parts.setdefault(message.blob_id, bytearray())
                assert message.offset == len(buf)
                buf.extend(message.data)
            else:
                assert isinstance(message, PullEnd)
                result.end = message
                break
        result.blobs = {k: bytes(v) for k, v in parts.items()}
        if ack:
            await self.send(PullAck(result.end.anchor))
        return result

    async def pull_all(self, anchor: int = 0, max_records: int = 1024) -> PullResult:
        """Pull (and acknowledge) until the server has no more."""
        total = PullResult()
        while True:
            page = await self.pull(anchor, max_records)
            total.records.extend(page.records)
            total.blobs.update(page.blobs)
            total.end = page.end
            assert page.end is not None
            anchor = page.end.anchor
            if not page.end.more:
                return total

    async def ping(self) -> None:
        """PING -> PONG (confirms the server processed everything before it)."""
        nonce = self.rng.getrandbits(63)
        await self.send(Ping(nonce))
        pong = await self.receive()
        assert isinstance(pong, Pong) and pong.nonce == nonce

    async def upload_blob(self, blob_id: bytes, data: bytes, chunk: int = 4096, *, stop_at: int | None = None) -> int:
        """BLOB_QUERY then BLOB_CHUNKs from the offset the server holds (until ``stop_at`` bytes, to
        imitate a broken upload); returns the final ``have``."""
        await self.send(BlobQuery(blob_id))
        ack = await self.receive()
        assert isinstance(ack, BlobAck)
        have = ack.have
        while have < (len(data) if stop_at is None else stop_at):
            await self.send(BlobChunk(blob_id, have, len(data), data[have:have + chunk]))
            ack = await self.receive()
            assert isinstance(ack, BlobAck)
            have = ack.have
        return have

    async def bye(self) -> None:
        """BYE."""
        await self.send(Bye("done"))


async def open_memory_device(server: SyncServer, nursery: trio.Nursery, *, account: str, device_id: bytes,
                             key: bytes, rng: random.Random, http: bool = False) -> ScriptedDevice:
    """A scripted device connected to ``server`` over an in-memory stream (served in ``nursery``)."""
    device_end, server_end = trio.testing.memory_stream_pair()
    serve = server.serve_http_stream if http else server.serve_stream
    nursery.start_soon(serve, server_end)
    stream: trio.abc.Stream | HttpStream = HttpStream(device_end) if http else device_end
    return ScriptedDevice(stream, account=account, device_id=device_id, key=key, rng=rng)


# ---------------------------------------------------------------------------------------- a world in memory


class MemoryWorld:
    """A reference server in memory (simulated storage, ``faults`` on) and handsets that sync with it.

    Handsets made by ``handset()`` belong to ``ACCOUNT`` unless told otherwise; every account is
    provisioned when ``running()`` starts. Inside ``async with world.running()``, ``connector()``
    connects to the server and ``sync()`` syncs a handset. Everything random is drawn from ``seed``.
    """

    def __init__(self, seed: int = 0, *, faults: tuple[str, ...] = (), blocks: int = 64,
                 accounts: Mapping[str, bytes] | None = None) -> None:
        self.seed = seed
        self.blocks = blocks
        """Erase blocks of each handset's flash (default geometry otherwise)."""
        self.storage = SimulatedStorage(random.Random(seed))
        self.faults = FaultSet(faults)
        self.server = SyncServer(self.storage, faults=self.faults, rng=random.Random(seed + 1))
        self.handsets: list[Handset] = []
        self.accounts: dict[str, bytes] = dict(accounts) if accounts is not None else {ACCOUNT: KEY}
        """Account name -> device key; ``handset()`` adds a new account with a key of its name."""
        self.nursery: trio.Nursery | None = None

    def handset(self, name: str, mutants: Mutants = NO_MUTANTS, *, account: str = ACCOUNT) -> Handset:
        """A new handset of ``account`` (device id n * 16 bytes of n, the n-th handset made)."""
        index = len(self.handsets)
        self.accounts.setdefault(account, hashlib.sha256(account.encode()).digest())
        rng = random.Random(f"{self.seed}/{name}")
        flash = NandFlash(Geometry(blocks=self.blocks), rng=random.Random(f"{self.seed}/{name}/flash"))
        handset = Handset.create(flash, device_id=bytes([index + 1]) * 16, account=account,
                                 key=self.accounts[account], rng=rng, mutants=mutants, name=name)
        self.handsets.append(handset)
        return handset

    def connector(self, *, http: bool = False) -> Connector:
        """Connects to the server over a memory stream, raw binding or ``http``."""
        if self.nursery is None:
            raise RuntimeError("the world is not running: use 'async with world.running()'")
        if http:
            return http_memory_connector(self.server.serve_http_stream, self.nursery)
        return memory_connector(self.server.serve_stream, self.nursery)

    async def provision(self) -> None:
        """Add every account the server does not know yet."""
        for account, key in self.accounts.items():
            if await self.storage.account_key(account) is None:
                await self.storage.add_account(account, key)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[MemoryWorld]:
        """Provision the accounts and serve connections until the block ends."""
        await self.provision()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()
                self.nursery = None

    async def sync(self, handset: Handset, *, http: bool = False, attempts: int = 5) -> SyncReport:
        """``handset.sync`` against this world's server."""
        return await handset.sync(self.connector(http=http), attempts=attempts)

    async def server_heads(self, account: str = ACCOUNT) -> dict[bytes, Record]:
        """Every record head the server holds for the account."""
        return {r.record_id: r for r in await self.storage.records(account)}


def live_bodies(heads: dict[bytes, Record]) -> dict[bytes, RecordBody]:
    """Live records that are not conflict copies."""
    return {rid: r.body for rid, r in heads.items() if not r.deleted and not r.conflict_of}


def conflict_copies(heads: dict[bytes, Record]) -> dict[bytes, Record]:
    """Live conflict copies."""
    return {rid: r for rid, r in heads.items() if not r.deleted and r.conflict_of}


def device_heads(handset: Handset) -> dict[bytes, Record]:
    """Every record head the handset's store holds, tombstones included."""
    return {v.record.record_id: v.record for v in handset.store.records()}


def device_bodies(handset: Handset) -> dict[bytes, RecordBody]:
    """The handset's live records that are not conflict copies."""
    return live_bodies(device_heads(handset))

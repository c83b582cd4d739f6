"""The reference server under attack over real sockets: a thousand slowloris sockets and a thousand
HELLOs that never authenticate do not keep a user from syncing, over either binding."""

from __future__ import annotations

import random
from typing import Any

import trio

from sidekick_testbed.emulator.flash import Geometry, NandFlash
from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.handset.transport import http_connector, tcp_connector
from sidekick_testbed.protocol.records import Note
from sidekick_testbed.server_stub.server import ServerAddresses, SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage
from tests.attack import HELLO, AttackCounts, hello_flood, http_hello_request, raise_open_files, slowloris

KEY = bytes(range(32))
SLOW = 1000
FLOOD = 1000


def _open_files_for(sockets: int) -> None:
    """Both ends of every socket live in this process: make room (the hard limit must allow it)."""
    wanted = 2 * sockets + 1024
    got = raise_open_files(wanted)
    assert got >= wanted, f"the open-files limit ({got}) is below the {wanted} this test needs (ulimit -Hn)"


async def _server(nursery: trio.Nursery) -> tuple[SyncServer, ServerAddresses]:
    storage = SimulatedStorage(random.Random(1))
    await storage.add_account("alice", KEY)
    server = SyncServer(storage, rng=random.Random(2))  # the default limits
    addresses = await nursery.start(lambda task_status: server.run(
        tcp=("127.0.0.1", 0), http=("127.0.0.1", 0), task_status=task_status))
    return server, addresses


def _handset(seed: int, title: str) -> Handset:
    phone = Handset.create(NandFlash(Geometry(blocks=32)), device_id=bytes([seed]) * 16, account="alice", key=KEY,
                           rng=random.Random(seed))
    phone.timeout = 20
    phone.add(Note(title, ""))
    return phone


async def test_slowloris_and_a_hello_flood_from_another_address_do_not_stop_a_sync(nursery: trio.Nursery) -> None:
    _open_files_for(2 * SLOW + 200)
    server, addresses = await _server(nursery)
    assert addresses.tcp is not None and addresses.http is not None
    counts = AttackCounts()
    stop = trio.Event()
    attacker = "127.0.0.2"
    for (host, port), data in ((addresses.tcp, HELLO), (addresses.http, http_hello_request(*addresses.http))):
        await nursery.start(lambda task_status, h=host, p=port, d=data: slowloris(
            h, p, SLOW, d, source=attacker, interval=1.0, counts=counts, stop=stop, task_status=task_status))
    assert counts.slow_opened == 2 * SLOW
    synced = trio.Event()

    def done() -> bool:  # the flood goes on until the syncs are over and it sent its thousand
        return synced.is_set() and counts.flood_sent >= FLOOD

    async def flood() -> None:
        async with trio.open_nursery() as floods:
            floods.start_soon(lambda: hello_flood(*addresses.http, http=True, source=attacker, workers=20,
                                                  done=done, counts=counts))
            floods.start_soon(lambda: hello_flood(*addresses.tcp, http=False, source=attacker, workers=20,
                                                  done=done, counts=counts))

    async with trio.open_nursery() as attack:
        attack.start_soon(flood)
        with trio.fail_after(60):
            while counts.flood_sent < 100:  # the flood is under way before the user syncs
                await trio.sleep(0.01)
            tcp_report = await _handset(1, "over tcp").sync(tcp_connector(*addresses.tcp), attempts=1)
            http_report = await _handset(2, "over http").sync(http_connector(*addresses.http), attempts=1)
        flood_before_sync_end = counts.flood_sent
        synced.set()
    stop.set()
    assert tcp_report.durable == 1 and http_report.durable == 1  # first attempt: no BUSY, no 503
    assert flood_before_sync_end >= 100 and counts.flood_sent >= FLOOD
    assert counts.flood_answered.get("HTTP/1.1 200", 0) > FLOOD // 4  # the flood was served, not refused
    refusals = server.metrics.refusals
    assert refusals["handshake_evicted"] >= 2 * SLOW - 2 * server.limits.max_handshakes_per_address
    assert refusals["max_sessions"] == 0
    assert server.admission.held_by("127.0.0.1") == 0
    assert server.admission.held_by(attacker) <= server.limits.max_handshakes_per_address
    titles = sorted(r.body.title for r in await server.storage.records("alice"))  # type: ignore[union-attr]
    assert titles == ["over http", "over tcp"]


async def test_unauthenticated_connections_held_from_the_users_own_address_give_way(nursery: Any) -> None:
    """The shape of an attack from behind the user's own NAT or proxy address: 1,100 connections
    per binding sit unauthenticated (a HELLO and nothing more; half a request head); a newcomer
    takes the place of the one that waited longest, so the user's handshake gets through."""
    _open_files_for(2 * 1100 + 200)
    server, addresses = await _server(nursery)
    assert addresses.tcp is not None and addresses.http is not None
    counts = AttackCounts()
    stop = trio.Event()
    held = ((addresses.tcp, HELLO + b"!", len(HELLO)), (addresses.http, http_hello_request(*addresses.http), 40))
    for (host, port), data, first in held:
        await nursery.start(lambda task_status, h=host, p=port, d=data, f=first: slowloris(
            h, p, 1100, d, source="127.0.0.1", interval=3600, counts=counts, stop=stop, task_status=task_status,
            first=f))
    assert counts.slow_opened == 2200
    with trio.fail_after(60):
        assert (await _handset(3, "tcp beside the held").sync(tcp_connector(*addresses.tcp), attempts=1)).durable == 1
        assert (await _handset(4, "http beside the held").sync(http_connector(*addresses.http),
                                                               attempts=1)).durable == 1
    stop.set()
    assert server.admission.held_by("127.0.0.1") <= server.limits.max_handshakes_per_address
    assert server.metrics.refusals["max_sessions"] == 0

"""A handset syncs through a real forward proxy (tinyproxy: HTTP in absolute form, the raw binding
through CONNECT; it closes every connection after one answer without saying so) and a real reverse
proxy (nginx, kept-alive upstream connections), also after the server closed an idle connection the
proxy still kept (the server's idle timeout is the shorter)."""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from sidekick_testbed.emulator.flash import Geometry, NandFlash
from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.handset.endpoint import ProxyURL
from sidekick_testbed.emulator.handset.sync_client import SyncFailed
from sidekick_testbed.emulator.handset.transport import http_connector, tcp_connector
from sidekick_testbed.protocol.records import Note
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.server import ServerAddresses, SyncServer
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage
from tests.proxy_servers import nginx, tinyproxy

KEY = bytes(range(32))
IDLE = 1.5  # the server's idle timeout: far shorter than either proxy's


@contextlib.asynccontextmanager
async def serving(nursery: trio.Nursery) -> AsyncIterator[tuple[SyncServer, ServerAddresses]]:
    storage = SimulatedStorage(random.Random(1))
    await storage.add_account("alice", KEY)
    server = SyncServer(storage, rng=random.Random(2), limits=Limits(idle_timeout=IDLE))
    addresses = await nursery.start(lambda task_status: server.run(
        tcp=("127.0.0.1", 0), http=("127.0.0.1", 0), task_status=task_status))
    try:
        yield server, addresses
    finally:
        server.shutdown()


def handset(seed: int) -> Handset:
    phone = Handset.create(NandFlash(Geometry(blocks=32)), device_id=bytes([seed]) * 16, account="alice", key=KEY,
                           rng=random.Random(seed))
    phone.timeout = 10
    return phone


async def until(condition: Any, what: str, timeout: float = 10.0) -> None:
    """Wait for ``condition()`` to hold (polled), failing after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


def requests_in(log: Path, what: str) -> int:
    return sum(what in line for line in log.read_text(errors="replace").splitlines())


async def test_http_binding_through_a_forward_proxy_in_absolute_form(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with serving(nursery) as (server, addresses), tinyproxy(tmp_path / "tp") as proxy_port:
        assert addresses.http is not None
        host, port = addresses.http
        connect = http_connector(host, port, proxy=ProxyURL("127.0.0.1", proxy_port))
        phone = handset(1)
        phone.add(Note("through the proxy", ""))
        report = await phone.sync(connect, attempts=1)
        assert report.durable == 1
        log = tmp_path / "tp" / "tinyproxy.log"
        target = f"POST http://{host}:{port}/sync HTTP/1.1"
        requests = requests_in(log, target)
        assert requests == server.metrics.http_status[200] >= 6  # each POST went to the proxy in absolute form
        # tinyproxy closes its side after every answer without saying so (no "Connection: close"),
        # and opens a new upstream connection per request: the handset noticed and reconnected
        assert server.metrics.http_connections == requests
        phone.add(Note("a second sync", ""))
        assert (await phone.sync(connect, attempts=1)).durable == 1
        assert len(await server.storage.records("alice")) == 2


async def test_raw_binding_through_connect(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with serving(nursery) as (server, addresses):
        assert addresses.tcp is not None
        host, port = addresses.tcp
        async with tinyproxy(tmp_path / "tp", connect_ports=(port,)) as proxy_port:
            phone = handset(2)
            phone.add(Note("inside a CONNECT tunnel", ""))
            report = await phone.sync(tcp_connector(host, port, proxy=ProxyURL("127.0.0.1", proxy_port)))
            assert report.durable == 1
            assert requests_in(tmp_path / "tp" / "tinyproxy.log", f"CONNECT {host}:{port} HTTP/1.1") == 1
        assert [r.body for r in await server.storage.records("alice")] == [Note("inside a CONNECT tunnel", "")]


async def test_a_proxy_that_refuses_connect_is_a_clear_error(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with serving(nursery) as (_, addresses), tinyproxy(tmp_path / "tp") as proxy_port:
        assert addresses.tcp is not None
        phone = handset(3)
        with pytest.raises(SyncFailed, match=r"refused CONNECT .*403"):
            await phone.sync(tcp_connector(*addresses.tcp, proxy=ProxyURL("127.0.0.1", proxy_port)), attempts=1)


async def test_proxy_credentials_are_sent(tmp_path: Path, nursery: trio.Nursery) -> None:
    async with serving(nursery) as (_, addresses), tinyproxy(tmp_path / "tp", credentials=("carrier", "s3cret")) as pp:
        assert addresses.http is not None
        phone = handset(4)
        with pytest.raises(SyncFailed):  # 407, or a reset: tinyproxy closes before it reads the body
            await phone.sync(http_connector(*addresses.http, proxy=ProxyURL("127.0.0.1", pp)), attempts=1)
        right = ProxyURL("127.0.0.1", pp, "carrier", "s3cret")
        assert (await phone.sync(http_connector(*addresses.http, proxy=right))).durable == 0


async def test_through_nginx_upstream_connections_are_reused_and_survive_the_server_idle_close(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    async with serving(nursery) as (server, addresses):
        assert addresses.http is not None
        async with nginx(tmp_path / "nginx", addresses.http[1], keepalive_timeout=60) as front:
            connect = http_connector("127.0.0.1", front, "/carrier/sync")
            phone = handset(5)
            for title in ("first", "second"):
                phone.add(Note(title, ""))
                assert (await phone.sync(connect)).durable == 1
            assert server.metrics.http_connections == 1  # both syncs' requests rode one upstream connection
            await until(lambda: server.metrics.refusals["http_idle"] >= 1, "the server to close the idle upstream")
            phone.add(Note("third", ""))
            assert (await phone.sync(connect, attempts=1)).durable == 1  # nginx saw the close: no 502
            assert server.metrics.http_connections == 2
            assert server.metrics.http_status[200] > 0 and set(server.metrics.http_status) == {200}
        assert sorted(r.body.title for r in await server.storage.records("alice")) == ["first", "second", "third"]


def cli(*argv: str) -> tuple[int, str, str]:
    from sidekick_testbed.emulator.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_device_sync_takes_a_url_and_the_http_proxy_variable(tmp_path: Path, nursery: trio.Nursery,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "alice.key"
    key_file.write_text(KEY.hex())
    image = str(tmp_path / "phone.img")
    async with serving(nursery) as (server, addresses), tinyproxy(tmp_path / "tp") as proxy_port:
        assert addresses.http is not None
        host, port = addresses.http

        async def sk(*argv: str) -> tuple[int, str, str]:
            return await trio.to_thread.run_sync(cli, "device", "--image", image, *argv)

        assert (await sk("--seed", "1", "init", "--account", "alice", "--key-file", str(key_file)))[0] == 0
        await sk("add", "note", "by url")
        monkeypatch.setenv("http_proxy", f"127.0.0.1:{proxy_port}")
        monkeypatch.setenv("NO_PROXY", "example.net")
        code, out, err = await sk("sync", "--server", f"http://{host}:{port}/sync")
        assert code == 0, err
        assert f"via proxy http://127.0.0.1:{proxy_port}" in out
        assert requests_in(tmp_path / "tp" / "tinyproxy.log", f"POST http://{host}:{port}/sync") >= 3
        monkeypatch.setenv("NO_PROXY", f"example.net, {host}")  # now the server is exempt: direct
        await sk("add", "note", "direct")
        code, out, err = await sk("sync", "--server", f"http://{host}:{port}/sync")
        assert code == 0 and "via proxy" not in out, err
        assert len(await server.storage.records("alice")) == 2

"""Real proxies for the tests: tinyproxy (a forward proxy) and nginx (a reverse proxy), each started
on a free port with its configuration in a temporary folder, stopped when the block ends. A
missing program fails the test (``.ci/run`` installs both); it never skips."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import trio

__all__ = ["free_port", "nginx", "program", "tinyproxy"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def program(name: str) -> str:
    """The path of ``name`` (also looked for in the sbin folders); AssertionError if it is missing."""
    for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/usr/local/sbin/{name}"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise AssertionError(f"{name} is not installed: these tests need it (apt-get install {name}; .ci/run does)")


async def _listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 15.0) -> None:
    """Return once ``port`` accepts connections; fail if the process exits or the time runs out."""
    with trio.move_on_after(timeout):
        while process.poll() is None:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return
    text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise AssertionError(f"{process.args!r} did not start listening on {port} (exit {process.poll()}): {text}")


@contextlib.asynccontextmanager
async def _running(argv: list[str], port: int, log: Path) -> AsyncIterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        await _listening(port, process, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def tinyproxy(folder: Path, *, connect_ports: tuple[int, ...] = (), credentials: tuple[str, str] | None = None,
                    timeout: int = 600) -> AsyncIterator[int]:
    """A tinyproxy on a free port (yielded): HTTP requests in absolute form are forwarded; CONNECT is
    allowed to ``connect_ports`` only (none: CONNECT is refused with 403). Its log is
    ``folder/tinyproxy.log`` (one ``Request ...: METHOD TARGET`` line per request)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [f"Port {port}", "Listen 127.0.0.1", f"Timeout {timeout}", f'LogFile "{folder}/tinyproxy.log"',
             "LogLevel Info", f'PidFile "{folder}/tinyproxy.pid"', "MaxClients 200", "Allow 127.0.0.1",
             "DisableViaHeader Yes"]
    lines += [f"ConnectPort {p}" for p in connect_ports] or ["ConnectPort 1"]  # 1: nothing useful
    if credentials is not None:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    config = folder / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n")
    async with _running([program("tinyproxy"), "-d", "-c", str(config)], port, folder / "tinyproxy.out"):
        yield port


@contextlib.asynccontextmanager
async def nginx(folder: Path, upstream: int, *, prefix: str = "/carrier/",
                keepalive_timeout: int = 60) -> AsyncIterator[int]:
    """An nginx on a free port (yielded) that passes ``prefix`` (``/carrier/sync``) to the HTTP
    binding at 127.0.0.1:``upstream`` (``/sync``) over kept-alive upstream connections, which it
    keeps up to ``keepalive_timeout`` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    temp = "\n".join(f"  {kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                          "uwsgi", "scgi"))
    config = folder / "nginx.conf"
    config.write_text(f"""daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log off;
{temp}
  upstream sidekick {{
    server 127.0.0.1:{upstream};
    keepalive 8;
    keepalive_timeout {keepalive_timeout}s;
  }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_timeout 75s;
    location {prefix} {{
      proxy_pass http://sidekick/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    async with _running([program("nginx"), "-p", str(folder), "-c", str(config)], port, folder / "error.log"):
        yield port

"""Run the reference server as a separate process, with restart and restore commands for certify.

``LocalServer`` provisions a store with one or more accounts in a directory, starts
``python -m sidekick_testbed.emulator serve`` on free local ports, takes a backup, and writes two shell scripts:
``restart.sh`` (kill -9, then start again on the same ports) and ``restore.sh`` (kill -9, restore
the backup, start again). Their paths are the ``--restart-cmd`` and ``--restore-cmd`` of a run.
With ``traced`` the server runs under ``sidekick powercut`` (its store alone in ``data/``) and
``power-cut.sh`` is the ``--power-cut-cmd``: a cut at the last DURABLE, unsynced writes lost.
The fault modes are read from ``faults.txt`` at every start, so ``set_faults`` switches them with
one restart.
Used by the suite's own tests and by anyone who wants to certify the reference server itself.
"""

from __future__ import annotations

import http.client
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sidekick_testbed.emulator.certify.target import Account, Target

__all__ = ["LocalServer", "free_port"]


_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_next_port = 0


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral range where
    one is known: the server restarts on the same port, and a port of that range can be taken
    meanwhile as the local end of any outgoing connection on the machine."""
    global _next_port
    low, high = 10_000, _ephemeral_start()
    if high - low >= 1000:
        span = high - low
        if not _next_port:
            _next_port = low + (os.getpid() * 997) % span  # processes of one test run start apart
        for _ in range(span):
            port, _next_port = _next_port, low + (_next_port + 1 - low) % span
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class LocalServer:
    """A reference server process in ``directory`` (see the module docstring)."""

    directory: Path
    faults: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ("vendor", "other")
    python: str = sys.executable
    tcp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    keys: dict[str, bytes] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    traced: bool = False

    @property
    def db(self) -> Path:
        """The SQLite store (alone in ``data/`` when traced: the directory a power cut rebuilds)."""
        return self.directory / "data" / "server.db" if self.traced else self.directory / "server.db"

    @property
    def pidfile(self) -> Path:
        """Holds the pid of the running server."""
        return self.directory / "server.pid"

    @property
    def restart_cmd(self) -> str:
        """Shell command: kill -9 the server and start it again (sourced: no process start before the kill)."""
        return f". {shlex.quote(str(self.directory / 'restart.sh'))}"

    @property
    def power_cut_cmd(self) -> str:
        """Shell command: cut the traced server's power at its last DURABLE and start it again."""
        return f". {shlex.quote(str(self.directory / 'power-cut.sh'))}"

    @property
    def restore_cmd(self) -> str:
        """Shell command: kill -9 the server, restore the backup taken at start, start it again."""
        return f"sh {shlex.quote(str(self.directory / 'restore.sh'))}"

    def _cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "sidekick_testbed.emulator", *args]

    @property
    def faults_file(self) -> Path:
        """One fault mode per line; read by the scripts at every start."""
        return self.directory / "faults.txt"

    def _serve_args(self) -> str:
        faults = f"$(sed 's/^/--fault /' {shlex.quote(str(self.faults_file))})"
        args = " ".join(shlex.quote(a) for a in self._cli(
            "serve", "--db", str(self.db), "--tcp", f"127.0.0.1:{self.tcp_port}",
            "--http", f"127.0.0.1:{self.http_port}", "--admin", f"127.0.0.1:{self.admin_port}",
            "--admin-token", self.admin_token))
        return f"{args} {faults}"

    def _serve_line(self) -> str:
        log = shlex.quote(str(self.directory / "server.log"))
        if self.traced:
            state = shlex.quote(str(self.directory / "powercut"))
            tool = " ".join(shlex.quote(a) for a in self._cli("powercut"))
            return (f"{tool} start --state {state} --data {shlex.quote(str(self.db.parent))} --log {log} -- "
                    f"sh {shlex.quote(str(self.directory / 'serve.sh'))} >/dev/null\n")
        return f"{self._serve_args()} >>{log} 2>&1 &\necho $! > {shlex.quote(str(self.pidfile))}\n"

    def _write_scripts(self) -> None:
        pid = shlex.quote(str(self.pidfile))
        kill = (f"p=; read p 2>/dev/null < {pid}\n"
                "if [ -n \"$p\" ]; then kill -9 \"$p\" 2>/dev/null\n"
                "  while kill -0 \"$p\" 2>/dev/null; do sleep 0.01; done; fi\n")
        if self.traced:
            state = shlex.quote(str(self.directory / "powercut"))
            tool = " ".join(shlex.quote(a) for a in self._cli("powercut"))
            kill = f"{tool} stop --state {state}\n"
            (self.directory / "serve.sh").write_text(f"#!/bin/sh\nexec {self._serve_args()}\n", encoding="utf-8")
            (self.directory / "power-cut.sh").write_text(
                f"#!/bin/sh\n{tool} cut --state {state} >>{shlex.quote(str(self.directory / 'cuts.txt'))}\n",
                encoding="utf-8")
        restore_faults = f"$(grep -x silent-rollback {shlex.quote(str(self.faults_file))} | sed 's/^/--fault /')"
        restore = " ".join(shlex.quote(a) for a in self._cli(
            "restore", "--db", str(self.db), str(self.directory / "backup.db")))
        (self.directory / "restart.sh").write_text("#!/bin/sh\n" + kill + self._serve_line(), encoding="utf-8")
        (self.directory / "restore.sh").write_text(
            "#!/bin/sh\n" + kill + f"{restore} {restore_faults} >/dev/null 2>&1 || exit 1\n" + self._serve_line(),
            encoding="utf-8")

    def start(self, *, ready_timeout: float = 30.0) -> LocalServer:
        """Provision the accounts, write the scripts, start the server and take the backup."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.db.parent.mkdir(parents=True, exist_ok=True)
        # Every account before the server starts: a tool closing the store beside a running server
        # would mark it closed cleanly (a crash then looks clean), and under the tracer only the
        # server may write its data (the power cut's premise).
        for name in self.accounts:
            self._add_account(name)
        self._write_scripts()
        self._write_faults()
        subprocess.run(["sh", str(self.directory / "restart.sh")], check=True)
        subprocess.run(self._cli("backup", "--db", str(self.db), str(self.directory / "backup.db")),
                       check=True, capture_output=True)
        self.wait_ready(ready_timeout)
        return self

    def _add_account(self, name: str) -> None:
        key_file = self.directory / f"{name}.key"
        subprocess.run(self._cli("accounts", "add", name, "--db", str(self.db), "--key-file", str(key_file)),
                       check=True, capture_output=True)
        self.keys[name] = bytes.fromhex(key_file.read_text(encoding="utf-8").strip())

    def _write_faults(self) -> None:
        self.faults_file.write_text("".join(f"{name}\n" for name in self.faults), encoding="utf-8")

    def set_faults(self, faults: tuple[str, ...]) -> None:
        """Switch the fault modes of the running server (admin API) and of every later start."""
        old, self.faults = self.faults, tuple(faults)
        self._write_faults()
        self.wait_ready()  # a check may end while a restart or power-cut command still brings it up
        for name in old:
            self._admin("POST", f"/faults/{name}/off")
        for name in self.faults:
            self._admin("POST", f"/faults/{name}/on")

    def _admin(self, method: str, path: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            conn.request(method, path, headers={"X-Admin-Token": self.admin_token})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"admin {method} {path}: HTTP {response.status} {body[:200]!r}")
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the TCP and admin ports accept connections (RuntimeError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not (_port_open(self.tcp_port) and _port_open(self.admin_port)):
            if time.monotonic() > deadline:
                log = (self.directory / "server.log").read_text(encoding="utf-8", errors="replace")[-2000:]
                raise RuntimeError(f"the reference server did not start: {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server process (if running)."""
        if self.traced:
            subprocess.run(self._cli("powercut", "stop", "--state", str(self.directory / "powercut")), check=False)
            return
        subprocess.run(["sh", "-c", f"p=$(cat {shlex.quote(str(self.pidfile))} 2>/dev/null); "
                                    "[ -n \"$p\" ] && kill -9 \"$p\" 2>/dev/null; true"], check=False)

    def target(self, *, http: bool = False, accounts: int = 2, restart: bool = True, restore: bool = True,
               timeout: float = 5.0) -> Target:
        """A ``Target`` for this server."""
        chosen = tuple(Account(name, self.keys[name]) for name in self.accounts[:accounts])
        return Target("127.0.0.1", self.http_port if http else self.tcp_port, http=http, accounts=chosen,
                      restart_cmd=self.restart_cmd if restart else None,
                      restore_cmd=self.restore_cmd if restore else None,
                      power_cut_cmd=self.power_cut_cmd if self.traced else None, timeout=timeout)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

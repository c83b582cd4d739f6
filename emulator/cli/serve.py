"""``sidekick serve``, ``sidekick accounts``, ``sidekick backup`` and ``sidekick restore``.

The reference server runs on the SQLite store at ``--db`` (default ``./sidekick-server.db``) or
in memory (``--memory``). Account keys and the server's randomness (nonces, session tokens,
generations) come from the operating system's secure source here, the one place where it is
used; ``--seed`` makes a server run deterministic for experiments.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from sidekick_testbed.emulator.cli.common import CliError, parse_hostport, require_writable
from sidekick_testbed.server_stub.faults import FaultSet, UnknownFault, describe
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.session_log import configure_logging
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage, backup_file
from sidekick_testbed.server_stub.storage import AccountExists, StorageError, UnknownAccount

if TYPE_CHECKING:
    from sidekick_testbed.server_stub.server import SyncServer

DEFAULT_DB = "sidekick-server.db"
DEFAULT_TCP = "127.0.0.1:7400"
DEFAULT_HTTP = "127.0.0.1:7401"
DEFAULT_ADMIN = "127.0.0.1:7402"
log = logging.getLogger("sidekick.server")
DEFAULTS = Limits()


def register(subparsers: Any) -> None:
    """Add ``serve``, ``accounts``, ``backup`` and ``restore``."""
    serve = subparsers.add_parser("serve", help="run the reference sync server")
    serve.add_argument("--tcp", default=None, metavar="HOST:PORT", help=f"raw binding (default {DEFAULT_TCP})")
    serve.add_argument("--http", default=None, metavar="HOST:PORT",
                       help=f"HTTP binding (default {DEFAULT_HTTP}; skipped with a warning if that port is taken)")
    serve.add_argument("--admin", default=None, metavar="HOST:PORT",
                       help=f"admin API (default {DEFAULT_ADMIN})")
    store = serve.add_mutually_exclusive_group()
    store.add_argument("--db", default=None, metavar="PATH", help=f"SQLite store (default ./{DEFAULT_DB})")
    store.add_argument("--memory", action="store_true", help="in-memory store (lost when the server stops)")
    serve.add_argument("--fault", action="append", default=[], metavar="NAME", help="switch on a fault mode")
    serve.add_argument("--list-faults", action="store_true", help="list the fault modes and exit")
    serve.add_argument("--admin-token", default=None, metavar="T",
                       help="token for the admin API (default: a random one, logged at start)")
    serve.add_argument("--log-json", action="store_true", help="log JSON lines")
    serve.add_argument("--no-group-commit", action="store_true", help="one transaction per write (baseline)")
    serve.add_argument("--idle-timeout", type=float, default=DEFAULTS.idle_timeout, metavar="S",
                       help=f"seconds of link silence that end a session (default {DEFAULTS.idle_timeout:g}; "
                            "an idle raw session is PINGed after half of it)")
    serve.add_argument("--max-sessions", type=int, default=DEFAULTS.max_sessions, metavar="N",
                       help=f"concurrent authenticated sessions (default {DEFAULTS.max_sessions})")
    serve.add_argument("--handshake-timeout", type=float, default=DEFAULTS.handshake_timeout, metavar="S",
                       help=f"seconds a connection has to authenticate (default {DEFAULTS.handshake_timeout:g})")
    serve.add_argument("--max-handshakes", type=int, default=DEFAULTS.max_handshakes, metavar="N",
                       help=f"connections and HTTP sessions not yet authenticated (default {DEFAULTS.max_handshakes})")
    serve.add_argument("--max-handshakes-per-address", type=int, default=DEFAULTS.max_handshakes_per_address,
                       metavar="N", help="of those, from one client address (default "
                                         f"{DEFAULTS.max_handshakes_per_address}; behind a reverse proxy every "
                                         "client has the proxy's address: raise it to --max-handshakes)")
    serve.add_argument("--seed", type=int, default=None, help="seed the server's RNG (experiments only)")
    serve.add_argument("--pcap", metavar="DIR", help="write each connection as a pcapng capture for Wireshark "
                       "into DIR, one file per connection (docs/WIRESHARK.md)")
    serve.set_defaults(func=cmd_serve)

    accounts = subparsers.add_parser("accounts", help="provision accounts and device keys")
    sub = accounts.add_subparsers(dest="accounts_command", metavar="ACTION")
    add = sub.add_parser("add", help="add an account; its key is written to --key-file as hex")
    add.add_argument("name")
    add.add_argument("--db", default=DEFAULT_DB, metavar="PATH")
    add.add_argument("--key", default=None, metavar="HEX", help="the key (default: 32 random bytes)")
    add.add_argument("--key-file", default=None, metavar="F",
                     help="write the key to this new file (hex, one line; an existing file is refused)")
    add.set_defaults(func=cmd_accounts_add)
    lst = sub.add_parser("list", help="list accounts")
    lst.add_argument("--db", default=DEFAULT_DB, metavar="PATH")
    lst.set_defaults(func=cmd_accounts_list)
    rm = sub.add_parser("remove", help="remove an account and all its data")
    rm.add_argument("name")
    rm.add_argument("--db", default=DEFAULT_DB, metavar="PATH")
    rm.set_defaults(func=cmd_accounts_remove)
    accounts.set_defaults(func=lambda args: _usage(accounts))

    backup = subparsers.add_parser("backup", help="copy a server store to a backup file (online)")
    backup.add_argument("--db", default=DEFAULT_DB, metavar="PATH")
    backup.add_argument("out", metavar="OUT")
    backup.set_defaults(func=cmd_backup)
    restore = subparsers.add_parser("restore", help="restore a server store from a backup (new generation)")
    restore.add_argument("--db", default=DEFAULT_DB, metavar="PATH")
    restore.add_argument("backup_file", metavar="IN")
    restore.add_argument("--fault", action="append", default=[], metavar="NAME",
                         help="fault mode for the restore (silent-rollback keeps the generation)")
    restore.set_defaults(func=cmd_restore)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _faults(names: list[str]) -> FaultSet:
    try:
        return FaultSet(names)
    except UnknownFault as exc:
        raise CliError(str(exc)) from None


def _rng(seed: int | None) -> random.Random:
    return random.Random(seed) if seed is not None else random.SystemRandom()


def _open_store(path: str, *, faults: FaultSet | None = None, group_commit: bool = True,
                seed: int | None = None) -> SqliteStorage:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"no directory {folder} for the store {path}")
    try:
        return SqliteStorage(path, rng=_rng(seed), faults=faults, group_commit=group_commit)
    except StorageError as exc:
        raise CliError(str(exc)) from None


def _store_exists(path: str) -> None:
    if not os.path.isfile(path):
        raise CliError(f"no server store at {path} (create one with `sidekick accounts add NAME --db {path}`)")


# ---------------------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT or SIGTERM."""
    if args.list_faults:
        print(describe())
        return 0
    faults = _faults(args.fault)
    addresses: dict[str, tuple[str, int] | None] = {
        name: parse_hostport(getattr(args, name) or default)
        for name, default in (("tcp", DEFAULT_TCP), ("http", DEFAULT_HTTP), ("admin", DEFAULT_ADMIN))
    }
    if min(args.max_sessions, args.max_handshakes, args.max_handshakes_per_address) < 1:
        raise CliError("--max-sessions, --max-handshakes and --max-handshakes-per-address must be at least 1")
    if args.idle_timeout <= 0 or args.handshake_timeout <= 0:
        raise CliError("--idle-timeout and --handshake-timeout must be positive")
    limits = Limits(idle_timeout=args.idle_timeout, max_sessions=args.max_sessions,
                    handshake_timeout=args.handshake_timeout, max_handshakes=args.max_handshakes,
                    max_handshakes_per_address=args.max_handshakes_per_address,
                    group_commit=not args.no_group_commit)
    configure_logging(json_lines=args.log_json)
    _raise_open_files(limits)
    if args.http is None and addresses["http"] is not None and not _port_free(*addresses["http"]):
        log.warning("default HTTP port %s is in use: HTTP binding not started (give --http HOST:PORT)",
                    addresses["http"][1])
        addresses["http"] = None
    token = args.admin_token or secrets.token_hex(16)
    if args.pcap:
        _pcap_folder(Path(args.pcap))
    try:
        trio.run(_serve, args, faults, limits, addresses, token)
    except BaseExceptionGroup as group:
        os_error = _first(group, OSError)
        if os_error is None:
            raise
        raise CliError(f"cannot listen: {os_error.strerror or os_error}") from None
    except OSError as exc:
        raise CliError(f"cannot listen: {exc.strerror or exc}") from None
    return 0


def _raise_open_files(limits: Limits) -> None:
    """Raise the soft limit of open files to the hard limit: every session and every connection
    before authentication holds a descriptor, and a soft limit of 1024 (a common default) is
    below what the bounds allow. Warn if even the hard limit is below them."""
    try:
        import resource  # noqa: PLC0415 - Unix only
    except ImportError:  # pragma: no cover
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-files limit raised from %d to %d", soft, target)
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
    needed = limits.max_sessions + limits.max_handshakes + 64
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("the open-files limit (%d) is below what --max-sessions and --max-handshakes allow (%d): "
                    "raise it (ulimit -n) or lower them", soft, needed)


def _port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (used only for the HTTP binding's default port)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _first(group: BaseExceptionGroup[Any], kind: type[OSError]) -> OSError | None:
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first(exc, kind)
            if found is not None:
                return found
    return None


async def _serve(args: argparse.Namespace, faults: FaultSet, limits: Limits,
                 addresses: dict[str, tuple[str, int] | None], token: str) -> None:
    from sidekick_testbed.server_stub.server import SyncServer

    storage: SqliteStorage | SimulatedStorage
    if args.memory:
        storage = SimulatedStorage(_rng(args.seed), faults=faults)
    else:
        storage = _open_store(args.db or DEFAULT_DB, faults=faults, group_commit=limits.group_commit,
                              seed=args.seed)
    server_class = SyncServer if args.pcap is None else _recording_server(Path(args.pcap))
    server = server_class(storage, faults=faults, limits=limits, rng=_rng(args.seed))
    server.admin_token = token
    if faults:
        log.warning("FAULT MODES ON: %s (this server is deliberately wrong)", ", ".join(sorted(faults.names)))
    if not args.admin_token:
        log.info("admin token: %s", token)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, server)
            await server.run(tcp=addresses["tcp"], http=addresses["http"], admin=addresses["admin"])
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await storage.aclose()


def _pcap_folder(folder: Path) -> None:
    """``--pcap DIR``: the folder exists (made if need be) and takes files, or CliError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--pcap {folder}: cannot make the folder: {exc.strerror or exc}") from None
    require_writable(folder, "--pcap", directory=True)


def _recording_server(folder: Path) -> type[SyncServer]:
    """A ``SyncServer`` that writes each connection it serves into ``folder`` as a pcapng file."""
    from sidekick_testbed.emulator.capture.streams import ServerRecorder
    from sidekick_testbed.server_stub.server import SyncServer, peer_address

    recorder = ServerRecorder(folder)

    def recorded(stream: trio.abc.Stream, binding: str) -> trio.abc.Stream:
        try:
            return recorder.wrap(stream, binding)
        except OSError as exc:  # the capture fails, not the service
            log.warning("--pcap: cannot record a %s connection: %s", binding, exc.strerror or exc)
            return stream

    class RecordingServer(SyncServer):
        # the client's address is read before the stream is wrapped: admission and R-AUTH-9 count by it
        async def serve_stream(self, stream: trio.abc.Stream, *, address: str | None = None) -> None:
            await super().serve_stream(recorded(stream, "tcp"), address=address or peer_address(stream))

        async def serve_http_stream(self, stream: trio.abc.Stream, *, address: str | None = None) -> None:
            await super().serve_http_stream(recorded(stream, "http"), address=address or peer_address(stream))

    return RecordingServer


async def _stop_on_signal(server: Any) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %s: stopping", signal.Signals(signum).name)
            server.shutdown()
            return


# ---------------------------------------------------------------------------------------- accounts


def _read_key(args: argparse.Namespace) -> bytes:
    if args.key is None:
        return secrets.token_bytes(32)
    try:
        key = bytes.fromhex(args.key.strip())
    except ValueError:
        raise CliError("--key must be hex") from None
    if len(key) < 16:
        raise CliError("--key must be at least 16 bytes (32 hex digits)")
    return key


def _create_key_file(path: str, key: bytes) -> None:
    """Write ``key`` as hex to a NEW file readable by its owner only; CliError if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"key file {path} already exists (it may hold another account's key): name a new "
                       "file, or pass the key it holds with --key") from None
    except OSError as exc:
        raise CliError(f"cannot write key file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
    except OSError as exc:
        os.unlink(path)
        raise CliError(f"cannot write key file {path}: {exc.strerror}") from None


def cmd_accounts_add(args: argparse.Namespace) -> int:
    """Add an account; with ``--key-file``, its key goes to a new file first, so that no account
    is ever added whose key was not kept."""
    name = args.name
    if not name or len(name.encode()) > 982 or not name.isprintable():
        raise CliError("account names are 1 to 982 bytes of printable UTF-8")
    key = _read_key(args)
    if args.key_file:
        _create_key_file(args.key_file, key)

    added = False

    async def add(storage: SqliteStorage) -> None:
        nonlocal added
        try:
            await storage.add_account(name, key)
            added = True
        finally:
            await storage.aclose()
    try:
        trio.run(add, _open_store(args.db))
    except (CliError, StorageError, AccountExists) as exc:
        if args.key_file and not added:  # the key of no account: its new file goes
            os.unlink(args.key_file)
        if isinstance(exc, AccountExists):
            raise CliError(f"account {name!r} already exists in {args.db}") from None
        if isinstance(exc, StorageError):
            raise CliError(f"cannot add account {name!r}: {exc}") from None
        raise
    if args.key_file:
        print(f"account {name} added to {args.db}; key written to {args.key_file}")
    else:
        print(f"account {name} added to {args.db}; key {key.hex()}")
    return 0


def cmd_accounts_list(args: argparse.Namespace) -> int:
    """List accounts."""
    _store_exists(args.db)
    storage = _open_store(args.db)

    async def listing() -> list[Any]:
        try:
            return await storage.list_accounts()
        finally:
            await storage.aclose()
    rows = trio.run(listing)
    if not rows:
        print("no accounts")
    for info in rows:
        print(f"{info.account}\trecords={info.records}\tdevices={info.devices}\tversion={info.server_version}")
    return 0


def cmd_accounts_remove(args: argparse.Namespace) -> int:
    """Remove an account."""
    _store_exists(args.db)
    storage = _open_store(args.db)

    async def remove() -> None:
        try:
            await storage.remove_account(args.name)
        finally:
            await storage.aclose()
    try:
        trio.run(remove)
    except UnknownAccount:
        raise CliError(f"no account {args.name!r} in {args.db}") from None
    print(f"account {args.name} removed")
    return 0


# ---------------------------------------------------------------------------------------- backup


def cmd_backup(args: argparse.Namespace) -> int:
    """Online backup of the store."""
    _store_exists(args.db)
    try:
        backup_file(args.db, args.out)
    except StorageError as exc:
        raise CliError(str(exc)) from None
    print(f"backup of {args.db} written to {args.out}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore the store from a backup; the store gets a new generation."""
    faults = _faults(args.fault)
    if not os.path.isfile(args.backup_file):
        raise CliError(f"no backup file {args.backup_file}")
    storage = _open_store(args.db, faults=faults)
    try:
        generation = storage.restore_from_file(args.backup_file)
    except StorageError as exc:
        raise CliError(str(exc)) from None
    finally:
        trio.run(storage.aclose)
    print(f"{args.db} restored from {args.backup_file}; generation {generation:#x}", file=sys.stdout)
    return 0

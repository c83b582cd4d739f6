"""``sidekick device --image PATH ...``: one emulated handset kept in a flash image file.

Every command loads the image, boots the handset (mounts the store), does its work and saves the
image. ``power-cut --at-op N`` arms a power cut for the next command: at that command's Nth flash
operation the power goes, the image keeps the flash exactly as it was at the cut, and the command
reports what survived a reboot.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import trio

from sidekick_testbed.emulator.cli.common import CliError, pcap_recording, require_writable
from sidekick_testbed.emulator.flash import (
    FlashError,
    Geometry,
    ImageError,
    NandFlash,
    PowerLoss,
    load_image,
    save_image,
)
from sidekick_testbed.emulator.handset import Handset, HandsetError, UnknownRecord, UnsyncedData
from sidekick_testbed.emulator.handset.endpoint import EndpointError, choose_proxy, parse_server
from sidekick_testbed.emulator.handset.sync_client import SyncError
from sidekick_testbed.emulator.handset.transport import http_connector, tcp_connector
from sidekick_testbed.emulator.store import StoredVersion, StoreError, SyncState
from sidekick_testbed.protocol.records import (
    CalendarEvent,
    Contact,
    Note,
    Photo,
    RecordBody,
    RecordKind,
    Todo,
)

__all__ = ["register"]

KINDS = {"contact": RecordKind.CONTACT, "event": RecordKind.EVENT, "todo": RecordKind.TODO,
         "note": RecordKind.NOTE, "photo": RecordKind.PHOTO}
CUT_SUFFIX = ".powercut"
LOCK_SUFFIX = ".lock"
DEFAULT_BLOCKS = 256


def register(subparsers: Any) -> None:
    """Add ``sidekick device`` and its subcommands."""
    device = subparsers.add_parser("device", help="an emulated handset kept in a flash image file",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    device.add_argument("--image", required=True, metavar="PATH", help="the handset's flash image file")
    device.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    sub = device.add_subparsers(dest="device_command", metavar="COMMAND", required=True)

    init = sub.add_parser("init", help="format a new handset image")
    init.add_argument("--account", required=True)
    init.add_argument("--key-file", required=True, metavar="F", help="the account key, as hex")
    init.add_argument("--device-id", metavar="HEX", help="16-byte device id (default: random)")
    init.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, metavar="N",
                      help=f"erase blocks of flash (default {DEFAULT_BLOCKS}, 128 KiB each)")
    init.set_defaults(func=_cmd_init)

    add = sub.add_parser("add", help="create a record")
    add_kinds = add.add_subparsers(dest="kind", metavar="KIND", required=True)
    contact = add_kinds.add_parser("contact", help="an address-book entry")
    contact.add_argument("name")
    contact.add_argument("--phone", action="append", default=[])
    contact.add_argument("--email", action="append", default=[])
    event = add_kinds.add_parser("event", help="a calendar event")
    event.add_argument("title")
    event.add_argument("--start", required=True, metavar="ISO")
    event.add_argument("--end", required=True, metavar="ISO")
    event.add_argument("--location", default="")
    todo = add_kinds.add_parser("todo", help="a to-do item")
    todo.add_argument("title")
    todo.add_argument("--due", metavar="ISO")
    todo.add_argument("--priority", type=int, default=0)
    note = add_kinds.add_parser("note", help="a note")
    note.add_argument("title")
    note.add_argument("--text", default="")
    photo = add_kinds.add_parser("photo", help="a photo (the image file's bytes)")
    photo.add_argument("file")
    photo.add_argument("--caption", default="")
    add.set_defaults(func=_cmd_add)

    edit = sub.add_parser("edit", help="change fields of a record (only those given)")
    edit.add_argument("id", help="record id (a unique hex prefix is enough)")
    for option in ("--name", "--title", "--start", "--end", "--location", "--due", "--text", "--caption"):
        edit.add_argument(option)
    edit.add_argument("--phone", action="append", help="replaces the phone list")
    edit.add_argument("--email", action="append", help="replaces the e-mail list")
    edit.add_argument("--priority", type=int)
    edit.add_argument("--done", action="store_true", default=None)
    edit.add_argument("--not-done", dest="done", action="store_false")
    edit.set_defaults(func=_cmd_edit)

    delete = sub.add_parser("delete", help="delete a record")
    delete.add_argument("id", help="record id (a unique hex prefix is enough)")
    delete.set_defaults(func=_cmd_delete)

    listing = sub.add_parser("list", help="list the records")
    listing.add_argument("--kind", choices=sorted(KINDS))
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--deleted", action="store_true", help="include deleted records")
    listing.set_defaults(func=_cmd_list)

    status = sub.add_parser("status", help="sync state per kind, the server it trusts, records at risk")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)

    sync = sub.add_parser("sync", help="sync with a server")
    sync.add_argument("--server", required=True, metavar="HOST:PORT|URL",
                      help="HOST:PORT (the raw TCP binding, or with --http the HTTP binding at /sync), or "
                           "http://HOST[:PORT][/PATH] (the HTTP binding at that URL)")
    sync.add_argument("--http", action="store_true", help="use the HTTP binding (default: raw TCP)")
    sync.add_argument("--proxy", metavar="URL", default=None,
                      help="forward proxy http://[USER:PASS@]HOST[:PORT] (port 1080 if none): the HTTP binding's "
                           "requests go through it, the raw binding through CONNECT; '' for none. Default, for "
                           "the HTTP binding: http_proxy, all_proxy or ALL_PROXY, except hosts in no_proxy or "
                           "NO_PROXY (as curl reads them)")
    sync.add_argument("--timeout", type=float, default=10.0, metavar="S",
                      help="seconds to wait for each answer (default 10)")
    sync.add_argument("--attempts", type=int, default=3, help="tries before giving up (default 3)")
    sync.add_argument("--pcap", metavar="OUT", help="write the sync's connections as a pcapng capture for "
                      "Wireshark (docs/WIRESHARK.md)")
    sync.set_defaults(func=_cmd_sync)

    reset = sub.add_parser("reset", help="factory reset (refused while data is not durable on the server)")
    reset.add_argument("--force", action="store_true", help="reset anyway and lose what is not durable")
    reset.set_defaults(func=_cmd_reset)

    cut = sub.add_parser("power-cut", help="arm a power cut at the Nth flash operation of the next command")
    cut.add_argument("--at-op", type=int, required=True, metavar="N")
    cut.set_defaults(func=_cmd_power_cut)


# ---------------------------------------------------------------------------------------- image


@contextlib.contextmanager
def _holding(path: Path) -> Iterator[None]:
    """Hold ``path`` while the block runs (an exclusive lock on ``path.lock``): each command loads
    the image and saves it whole, so two at once would lose one's changes. A second command
    waits, saying so. Where the platform has no flock, nothing is held."""
    try:
        import fcntl  # noqa: PLC0415 - Unix only
    except ImportError:  # pragma: no cover
        yield
        return
    try:
        lock = open(str(path) + LOCK_SUFFIX, "a", encoding="ascii")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise CliError(f"cannot lock image {path}: {exc.strerror or exc}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"sidekick: waiting for another command on {path} to finish", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class _Image:
    """The image file, its handset, and the armed power cut (if any)."""

    def __init__(self, path: Path, seed: int | None) -> None:
        self.path = path
        self.rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(16), "big"))
        self.flash: NandFlash | None = None
        self.handset: Handset | None = None
        self.cut_at: int | None = None

    def load(self) -> Handset:
        if not self.path.exists():
            raise CliError(f"no image at {self.path}: create one with 'sidekick device --image "
                           f"{self.path} init --account A --key-file F'")
        try:
            self.flash = load_image(self.path)
        except (OSError, ValueError, FlashError, ImageError) as exc:
            raise CliError(f"cannot read image {self.path}: {exc}") from None
        try:
            self.handset = Handset(self.flash, rng=self.rng, name=self.path.name)
        except (StoreError, FlashError) as exc:
            raise CliError(f"{self.path} does not hold a handset store: {exc}") from None
        self._arm()
        return self.handset

    def _arm(self) -> None:
        cut_file = Path(str(self.path) + CUT_SUFFIX)
        if not cut_file.exists():
            return
        try:
            at_op = int(json.loads(cut_file.read_text())["at_op"])
        except (OSError, ValueError, KeyError, TypeError):
            raise CliError(f"unreadable power-cut file {cut_file}; remove it") from None
        cut_file.unlink()
        assert self.flash is not None
        self.cut_at = at_op
        self.flash.arm_power_cut(self.flash.ops + at_op)

    def save(self) -> None:
        assert self.flash is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            save_image(self.flash, tmp)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise CliError(f"cannot write image {self.path}: {exc}") from None


def _run(args: argparse.Namespace, work: Callable[[Handset], int | None]) -> int:
    """Load the image, run ``work``, save the image; handle an armed power cut. The image is held
    from load to save."""
    with _holding(Path(args.image)):
        return _run_held(args, work)


def _run_held(args: argparse.Namespace, work: Callable[[Handset], int | None]) -> int:
    image = _Image(Path(args.image), args.seed)
    handset = image.load()
    try:
        result = work(handset)
    except PowerLoss:
        image.save()
        return _report_cut(image, args.device_command)
    except UnsyncedData as exc:
        raise CliError(str(exc), 1) from None
    except HandsetError as exc:
        raise CliError(str(exc), 1) from None
    except StoreError as exc:
        image.save()
        raise CliError(f"store: {exc}", 1) from None
    image.save()
    if image.cut_at is not None:
        print(f"note: the armed power cut at flash operation {image.cut_at} was not reached", file=sys.stderr)
    return int(result or 0)


def _report_cut(image: _Image, command: str) -> int:
    assert image.flash is not None
    print(f"POWER CUT at flash operation {image.cut_at} of '{command}': the image keeps the flash as it "
          f"was at the cut. After reboot:")
    try:
        handset = Handset(image.flash, rng=image.rng, name=image.path.name)
    except StoreError as exc:
        print(f"  the store does not mount: {exc}")
        return 1
    _print_status(handset.status())
    return 1


# ---------------------------------------------------------------------------------------- commands


def _cmd_init(args: argparse.Namespace) -> int:
    with _holding(Path(args.image)):
        return _init(args)


def _init(args: argparse.Namespace) -> int:
    path = Path(args.image)
    if path.exists():
        raise CliError(f"{path} already exists; init refuses to overwrite a handset image")
    key = _read_key(Path(args.key_file))
    rng = random.Random(args.seed if args.seed is not None else int.from_bytes(os.urandom(16), "big"))
    if args.device_id is not None:
        try:
            device_id = bytes.fromhex(args.device_id)
        except ValueError:
            raise CliError(f"--device-id {args.device_id!r} is not hex") from None
        if len(device_id) != 16:
            raise CliError(f"--device-id must be 16 bytes (32 hex digits), got {len(device_id)}")
    else:
        device_id = rng.randbytes(16)
    if not 8 <= args.blocks <= 8192:
        raise CliError("--blocks must be between 8 and 8192")
    if not args.account or len(args.account.encode()) > 255:
        raise CliError("--account must be 1 to 255 bytes")
    flash = NandFlash(Geometry(blocks=args.blocks))
    Handset.create(flash, device_id=device_id, account=args.account, key=key, rng=rng, name=path.name)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_image(flash, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise CliError(f"cannot write image {path}: {exc}") from None
    print(f"handset {device_id.hex()} of account {args.account!r} created in {path}")
    return 0


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read key file {path}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise CliError(f"key file {path} does not hold a hex key") from None
    if len(key) < 16:
        raise CliError(f"key in {path} is too short ({len(key)} bytes; at least 16)")
    return key


def _cmd_add(args: argparse.Namespace) -> int:
    body: RecordBody | None = None
    data = b""
    if args.kind == "contact":
        body = Contact(args.name, tuple(args.phone), tuple(args.email))
    elif args.kind == "event":
        start, end = _time(args.start, "--start"), _time(args.end, "--end")
        if end < start:
            raise CliError("--end is before --start")
        body = CalendarEvent(args.title, start, end, args.location)
    elif args.kind == "todo":
        body = Todo(args.title, False, _time(args.due, "--due") if args.due else 0, _priority(args.priority))
    elif args.kind == "note":
        body = Note(args.title, args.text)
    else:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    _check_text(args)

    def work(handset: Handset) -> int:
        if body is None:
            record_id = handset.take_photo(args.caption, data)
        else:
            record_id = handset.add(body)
        print(record_id.hex())
        return 0

    return _run(args, work)


def _cmd_edit(args: argparse.Namespace) -> int:
    _check_text(args)

    def work(handset: Handset) -> int:
        head = _find(handset, args.id)
        handset.edit(head.record.record_id, _edited(head.record.body, args))
        print(head.record.record_id.hex())
        return 0

    return _run(args, work)


def _edited(body: RecordBody, args: argparse.Namespace) -> RecordBody:
    fields: dict[str, Any] = {}
    given = {name: getattr(args, name) for name in
             ("name", "title", "start", "end", "location", "due", "text", "caption", "phone", "email",
              "priority", "done") if getattr(args, name) is not None}
    allowed = {
        Contact: {"name", "phone", "email"}, CalendarEvent: {"title", "start", "end", "location"},
        Todo: {"title", "due", "priority", "done"}, Note: {"title", "text"}, Photo: {"caption"},
    }[type(body)]
    wrong = sorted(set(given) - allowed)
    if wrong:
        raise CliError(f"a {body.KIND.name.lower()} has no {', '.join('--' + w for w in wrong)}; "
                       f"it takes {', '.join('--' + a for a in sorted(allowed))}")
    if not given:
        raise CliError("nothing to change: give at least one field option")
    for name, value in given.items():
        if name in ("start", "end", "due"):
            fields[name] = _time(value, "--" + name)
        elif name == "phone":
            fields["phones"] = tuple(value)
        elif name == "email":
            fields["emails"] = tuple(value)
        elif name == "priority":
            fields[name] = _priority(value)
        else:
            fields[name] = value
    new = replace(body, **fields)
    if isinstance(new, CalendarEvent) and new.end < new.start:
        raise CliError("the event would end before it starts")
    return new


def _cmd_delete(args: argparse.Namespace) -> int:
    def work(handset: Handset) -> int:
        head = _find(handset, args.id)
        handset.delete(head.record.record_id)
        print(f"deleted {head.record.record_id.hex()}")
        return 0

    return _run(args, work)


def _cmd_list(args: argparse.Namespace) -> int:
    def work(handset: Handset) -> int:
        meta = handset.store.meta
        rows = []
        for version in sorted(handset.store.records(), key=lambda v: (v.record.kind, v.record.record_id)):
            record = version.record
            if record.deleted and not args.deleted:
                continue
            if args.kind and record.kind is not KINDS[args.kind]:
                continue
            rows.append({
                "id": record.record_id.hex(), "kind": record.kind.name.lower(),
                "state": _state(version, meta.generation), "version": record.version, "lsn": version.lsn,
                "deleted": record.deleted, "conflict_of": record.conflict_of.hex() or None,
                "summary": _summary(record.body),
            })
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        for row in rows:
            flags = " (deleted)" if row["deleted"] else ""
            flags += f" (conflict copy of {str(row['conflict_of'])[:8]})" if row["conflict_of"] else ""
            print(f"{row['id']}  {row['kind']:<7} {row['state']:<18} v{row['version']:<6} "
                  f"{row['summary']}{flags}")
        if not rows:
            print("(no records)")
        return 0

    return _run(args, work)


def _cmd_status(args: argparse.Namespace) -> int:
    def work(handset: Handset) -> int:
        status = handset.status()
        if args.json:
            print(json.dumps(status, indent=1))
        else:
            _print_status(status)
        return 0

    return _run(args, work)


def _print_status(status: dict[str, Any]) -> None:
    print(f"device {status['device_id']}  account {status['account']!r}")
    if status["server_id"] is None:
        print("server: none yet (never synced)")
    else:
        print(f"trusts server {status['server_id']} generation {status['generation']:#018x}  "
              f"durable LSN {status['durable_lsn']}  anchor {status['anchor']}")
    print(f"{'kind':<8} {'total':>6} {'deleted':>8} {'dirty':>6} {'pushed-not-durable':>19} {'durable':>8}")
    for kind, counts in status["kinds"].items():
        print(f"{kind:<8} {counts['total']:>6} {counts['deleted']:>8} {counts['dirty']:>6} "
              f"{counts['pushed_not_durable']:>19} {counts['durable']:>8}")
    if not status["kinds"]:
        print("(no records)")
    at_risk = status["at_risk"]
    print(f"at risk: {at_risk} version(s) not durable on the server" if at_risk
          else "at risk: none (everything is durable on the server)")


def _cmd_sync(args: argparse.Namespace) -> int:
    try:
        server = parse_server(args.server, http=args.http)
        proxy = choose_proxy(server, args.proxy, os.environ)
    except EndpointError as exc:
        raise CliError(str(exc)) from None
    if args.timeout <= 0 or args.attempts < 1:
        raise CliError("--timeout must be positive and --attempts at least 1")
    logging.basicConfig(level=logging.WARNING, format="sidekick: warning: %(message)s", stream=sys.stderr)
    if server.http and args.proxy is None and os.environ.get("HTTP_PROXY") and not os.environ.get("http_proxy"):
        print("sidekick: warning: HTTP_PROXY is not read (as by curl: a web server sets it from a request "
              "header); set http_proxy or give --proxy", file=sys.stderr)
    host, port = server.host, server.port
    if server.http:
        connect = http_connector(host, port, server.path, proxy=proxy)
    else:
        connect = tcp_connector(host, port, proxy=proxy, proxy_timeout=args.timeout)
    via = f" via proxy {proxy}" if proxy is not None else ""

    if args.pcap:
        require_writable(Path(args.pcap), "--pcap", directory=False)

    def work(handset: Handset) -> int:
        handset.timeout = args.timeout
        try:
            meta = handset.store.meta
            with pcap_recording(args.pcap, client=f"{meta.account}.{meta.device_id.hex()[:8]}",
                                comment=f"sidekick device sync: device {meta.device_id.hex()} of account "
                                f"{meta.account} with {server} ({'HTTP' if server.http else 'raw'} binding){via}"):
                report = trio.run(partial(handset.sync, connect, attempts=args.attempts))
        except SyncError as exc:
            raise CliError(str(exc), 1) from None
        if report.regression:
            print(f"SERVER REGRESSION DETECTED: {report.regression}; recovery sync pushed the whole local copy")
        print(f"synced with {server}{via}: pushed {report.pushed}, durable {report.durable}, "
              f"pulled {report.pulled}, conflicts {len(report.conflicts)}, attempts {report.attempts}; "
              f"generation {report.generation:#018x}, anchor {report.anchor}")
        return 0

    return _run(args, work)


def _cmd_reset(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="sidekick: warning: %(message)s", stream=sys.stderr)

    def work(handset: Handset) -> int:
        handset.factory_reset(force=args.force)
        print("factory reset done: the handset is empty; sync to restore from the server")
        return 0

    return _run(args, work)


def _cmd_power_cut(args: argparse.Namespace) -> int:
    if args.at_op < 1:
        raise CliError("--at-op must be 1 or more (the first flash operation is 1)")
    path = Path(args.image)
    with _holding(path):
        if not path.exists():
            raise CliError(f"no image at {path}")
        Path(str(path) + CUT_SUFFIX).write_text(json.dumps({"at_op": args.at_op}))
    print(f"power cut armed: the next command on {path} loses power at its flash operation {args.at_op}")
    return 0


# ---------------------------------------------------------------------------------------- parsing and display


def _find(handset: Handset, prefix: str) -> StoredVersion:
    prefix = prefix.lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        raise CliError(f"record id {prefix!r} is not hex")
    matches = [v for v in handset.store.records()
               if v.record.record_id.hex().startswith(prefix) and not v.record.deleted]
    if not matches:
        raise UnknownRecord(f"no record {prefix} on this handset")
    if len(matches) > 1:
        raise CliError(f"record id prefix {prefix} is ambiguous ({len(matches)} records)")
    return matches[0]


def _time(text: str, option: str) -> int:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"{option} {text!r} is not an ISO date/time (e.g. 2009-10-02T09:30)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


def _priority(value: int) -> int:
    if not 0 <= value <= 255:
        raise CliError("--priority must be between 0 and 255")
    return value


def _check_text(args: argparse.Namespace) -> None:
    for name in ("name", "title", "text", "location", "caption"):
        value = getattr(args, name, None)
        if value is not None and len(value.encode("utf-8", "surrogatepass")) > 65535:
            raise CliError(f"--{name} is longer than 65535 bytes")
    for name in ("phone", "email"):
        values = getattr(args, name, None) or []
        if len(values) > 1000:
            raise CliError(f"too many --{name} values")


def _state(version: StoredVersion, generation: int) -> str:
    if version.state is SyncState.DURABLE:
        return "durable" if version.generation == generation else "durable-old-gen"
    return "pushed-not-durable" if version.state is SyncState.PUSHED else "dirty"


def _summary(body: RecordBody) -> str:
    if isinstance(body, Contact):
        extra = ", ".join((*body.phones, *body.emails))
        return body.name + (f" <{extra}>" if extra else "")
    if isinstance(body, CalendarEvent):
        start = dt.datetime.fromtimestamp(body.start, dt.UTC).strftime("%Y-%m-%d %H:%M")
        return f"{body.title} @ {start}" + (f" ({body.location})" if body.location else "")
    if isinstance(body, Todo):
        return ("[x] " if body.done else "[ ] ") + body.title + (f" !{body.priority}" if body.priority else "")
    if isinstance(body, Note):
        return body.title
    return f"{body.caption or '(photo)'} [{body.size} bytes]"

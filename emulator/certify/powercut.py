"""Power cuts for a server under test: what a cut at the moment of a DURABLE leaves on the disk.

``kill -9`` keeps the operating system's page cache, so a server that writes but never syncs
survives it. A power cut does not. This module runs the server under ``strace`` (a Debian
package; Linux only) and records every write, sync and rename it makes to the files of its data
directory, and every byte it sends on its sockets. ``cut`` kills it, finds the last DURABLE frame
it sent, and rebuilds the data directory as the disk would hold it had the power failed at the
instant that frame was handed to the kernel:

* ``power`` model (the default): a write survives only if a later ``fsync``/``fdatasync`` of the
  same file (or a ``sync``/``syncfs``) had returned before that instant;
* ``crash`` model: every write that had returned before that instant survives (a process crash
  at the moment of the DURABLE, page cache kept): it catches a server that writes behind its
  DURABLE, however short the window.

File creation, truncation, rename and unlink are applied when they return (the file system's
journal is taken as synchronous), and a write in flight at the cut is lost. Writes through a
shared memory map are invisible to the tracer (a server that keeps its data that way needs a
file-system layer instead). The method is ALICE's (a syscall trace turned into crash states) with
lazyfs's semantics (unsynced data is lost), cut at the one instant a sync protocol makes critical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CutReport", "PowerCutError", "TraceEvent", "cut", "parse_trace", "rebuild", "start"]

STRACE_CALLS = ("write,pwrite64,writev,pwritev,pwritev2,sendto,sendmsg,fsync,fdatasync,sync,syncfs,"
                "open,openat,creat,ftruncate,truncate,rename,renameat,renameat2,unlink,unlinkat,lseek,close")
STRING_LIMIT = 1 << 24
"""strace's ``-s``: the longest write recorded whole (a longer one is an error, never a silent cut)."""
MODELS = ("power", "crash")
NEVER = 1 << 62
"""The ``exit`` of a call that never returned."""
DURABLE_TYPE = 0x13


class PowerCutError(Exception):
    """The power-cut tool cannot do what was asked (no strace, no state, a trace it cannot read)."""


# ---------------------------------------------------------------------------------------- the trace

@dataclass(slots=True)
class TraceEvent:
    """One completed system call: where it entered and returned in the trace, and what it did."""

    entry: int
    exit: int
    name: str
    args: str
    result: str


_LINE = re.compile(r"^(\d+)\s+(.*)$")
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_RETURNED = re.compile(r"\)\s+= ")
"""Where the arguments end and the result begins: strace pads a short line with spaces before ``=``
(``<... sendto resumed>)             = 90``)."""
_FD = re.compile(r"(-?\d+|AT_FDCWD)(?:<((?:\\x[0-9a-f]{2})*)>)?")
_STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"(\.\.\.)?')


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def parse_trace(lines: Iterator[str] | list[str]) -> list[TraceEvent]:
    """The calls of an ``strace -f -y -xx`` log, in the order they returned; a call the kill caught
    inside comes last, with ``exit`` NEVER and no result."""
    pending: dict[str, tuple[int, str, str]] = {}
    events: list[TraceEvent] = []
    for index, raw in enumerate(lines):
        line = raw.rstrip("\n")
        match = _LINE.match(line)
        if match is None:
            continue
        pid, rest = match.groups()
        if rest.startswith(("+++", "---")):
            continue
        resumed = _RESUMED.match(rest)
        if resumed is not None:
            name, tail = resumed.groups()
            started = pending.pop(pid, None)
            if started is None or started[1] != name:
                continue
            entry, _, head = started
            body = head + tail
        elif rest.endswith(_UNFINISHED):
            call = _CALL.match(rest[: -len(_UNFINISHED)])
            if call is not None:
                pending[pid] = (index, call.group(1), call.group(2))
            continue
        else:
            call = _CALL.match(rest)
            if call is None:
                continue
            entry, name, body = index, call.group(1), call.group(2)
        returned = max(_RETURNED.finditer(body), key=lambda match: match.start(), default=None)  # the last
        if returned is None:  # the kill came while strace held the call open: printed, never returned
            pending[pid] = (entry, name, body)
            continue
        events.append(TraceEvent(entry, index, name, body[:returned.start()], body[returned.end():].strip()))
    for entry, name, head in pending.values():  # killed inside the call: it never returned
        events.append(TraceEvent(entry, NEVER, name, head, ""))
    return events


def _fd_path(args: str) -> tuple[int | None, str | None]:
    """The first argument's fd and the path strace annotated it with (``-y``)."""
    match = _FD.match(args)
    if match is None:
        return None, None
    fd = None if match.group(1) == "AT_FDCWD" else int(match.group(1))
    path = _unhex(match.group(2)).decode("utf-8", "surrogateescape") if match.group(2) is not None else None
    return fd, path


def _strings(args: str) -> list[bytes]:
    found = []
    for match in _STRING.finditer(args):
        if match.group(2):
            raise PowerCutError(f"a write longer than strace's limit of {STRING_LIMIT} bytes was cut short")
        found.append(_unhex(match.group(1)))
    return found


def _returned(result: str) -> int:
    head = result.split(" ", 1)[0].split("<", 1)[0]
    try:
        return int(head)
    except ValueError:
        return -1


def _returned_path(result: str) -> str | None:
    match = re.match(r"^\d+<((?:\\x[0-9a-f]{2})*)>", result)
    return _unhex(match.group(1)).decode("utf-8", "surrogateescape") if match else None


# ---------------------------------------------------------------------------------------- the cut point

def _frames_end(stream: bytes, kind: int) -> list[int]:
    """End offsets of the valid frames of message type ``kind`` found anywhere in ``stream``
    (raw TCP frames, or frames inside HTTP response bodies: the CRC tells them apart)."""
    ends: list[int] = []
    start = 0
    needle = b"SK\x01" + bytes([kind]) + b"\x00\x00"
    while (at := stream.find(needle, start)) >= 0:
        start = at + 1
        if at + 14 > len(stream):
            break
        length = int.from_bytes(stream[at + 10:at + 14], "big")
        end = at + 18 + length
        if end > len(stream):
            continue
        crc = int.from_bytes(stream[end - 4:end], "big")
        if zlib.crc32(stream[at:end - 4]) == crc:
            ends.append(end)
    return ends


def durable_cut_line(events: list[TraceEvent]) -> tuple[int | None, int]:
    """The trace line of the send that handed the kernel the last byte of the last DURABLE frame,
    and how many DURABLE frames were sent in all."""
    streams: dict[str, bytearray] = {}
    writes: dict[str, list[tuple[int, int]]] = {}   # socket -> (stream end offset, entry line)
    for event in events:
        if event.name not in ("sendto", "sendmsg", "write", "writev"):
            continue
        _, path = _fd_path(event.args)
        if path is None or not path.startswith(("socket:", "TCP", "TCPv6", "UNIX")):
            continue
        data = b"".join(_strings(event.args))
        sent = _returned(event.result) if event.exit != NEVER else len(data)  # in flight: it may have gone out
        if sent <= 0:
            continue
        data = data[:sent]
        stream = streams.setdefault(path, bytearray())
        stream += data
        writes.setdefault(path, []).append((len(stream), event.entry))
    best: int | None = None
    count = 0
    for path, stream in streams.items():
        ends = _frames_end(bytes(stream), DURABLE_TYPE)
        count += len(ends)
        if ends:
            last = ends[-1]
            line = next(entry for end, entry in writes[path] if end >= last)
            best = line if best is None else max(best, line)
    return best, count


# ---------------------------------------------------------------------------------------- rebuilding

@dataclass
class CutReport:
    """What one cut did."""

    model: str
    cut_line: int | None
    durable_frames: int
    writes_kept: int = 0
    writes_lost: int = 0
    bytes_lost: int = 0
    files: list[str] = field(default_factory=list)

    def text(self) -> str:
        """One line for people."""
        where = (f"at the last of {self.durable_frames} DURABLE frames sent (trace line {self.cut_line})"
                 if self.cut_line is not None else "at the kill (no DURABLE frame was sent)")
        return (f"power cut ({self.model} model) {where}: {self.writes_kept} writes kept, {self.writes_lost} lost "
                f"({self.bytes_lost} bytes), {len(self.files)} files")


def rebuild(events: list[TraceEvent], base: Path, data: Path, cwd: Path, *, model: str = "power",
            cut_line: int | None = None, durable_frames: int = 0) -> CutReport:
    """Rewrite ``data`` as ``base`` plus the effects of ``events`` that a cut at ``cut_line``
    (None: after everything) keeps under ``model``."""
    if model not in MODELS:
        raise PowerCutError(f"unknown model {model!r} (one of {', '.join(MODELS)})")
    data_root = os.path.realpath(data)
    limit = cut_line if cut_line is not None else float("inf")
    done = [e for e in events if e.exit < limit]
    report = CutReport(model, cut_line, durable_frames)

    def inside(path: str | None) -> str | None:
        if path is None:
            return None
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(cwd, path))
        if full == data_root or not full.startswith(data_root + os.sep):
            return None
        return os.path.relpath(full, data_root)

    last_sync: dict[str, int] = {}
    global_sync = -1
    for event in done:
        if event.name in ("fsync", "fdatasync") and _returned(event.result) == 0:
            rel = inside(_fd_path(event.args)[1])
            if rel is not None:
                last_sync[rel] = max(last_sync.get(rel, -1), event.entry)
        elif event.name in ("sync", "syncfs") and _returned(event.result) == 0:
            global_sync = max(global_sync, event.entry)

    files: dict[str, bytearray] = {}
    for root, _, names in os.walk(base):
        for name in names:
            full = os.path.join(root, name)
            files[os.path.relpath(full, base)] = bytearray(Path(full).read_bytes())
    offsets: dict[int, int] = {}
    appending: set[int] = set()

    def write_at(rel: str, offset: int, data_: bytes, exit_line: int) -> None:
        durable = model == "crash" or max(last_sync.get(rel, -1), global_sync) > exit_line
        if not durable:
            report.writes_lost += 1
            report.bytes_lost += len(data_)
            return
        report.writes_kept += 1
        content = files.setdefault(rel, bytearray())
        if len(content) < offset:
            content.extend(bytes(offset - len(content)))
        content[offset:offset + len(data_)] = data_

    for event in done:
        name, ret = event.name, _returned(event.result)
        if ret < 0:
            continue
        fd, path = _fd_path(event.args)
        if name in ("open", "openat", "creat"):
            opened = _returned_path(event.result)
            rel = inside(opened)
            if rel is not None:
                flags = event.args
                if rel not in files or "O_TRUNC" in flags or name == "creat":
                    files[rel] = bytearray()
                offsets[ret] = 0
                if "O_APPEND" in flags:
                    appending.add(ret)
                else:
                    appending.discard(ret)
            continue
        if name == "close" and fd is not None:
            offsets.pop(fd, None)
            appending.discard(fd)
            continue
        if name == "lseek" and fd is not None:
            offsets[fd] = ret
            continue
        if name in ("rename", "renameat", "renameat2"):
            paths = [_unhex(m.group(1)).decode("utf-8", "surrogateescape") for m in _STRING.finditer(event.args)]
            dirs = [m.group(2) for m in _FD.finditer(event.args) if m.group(2) is not None]
            if len(paths) == 2:
                if name != "rename" and len(dirs) == 2:
                    paths = [p if os.path.isabs(p) else os.path.join(_unhex(d).decode(), p) for p, d in zip(paths, dirs, strict=True)]
                old, new = inside(paths[0]), inside(paths[1])
                if old is not None and old in files:
                    content = files.pop(old)
                    if new is not None:
                        files[new] = content
            continue
        if name in ("unlink", "unlinkat"):
            paths = [_unhex(m.group(1)).decode("utf-8", "surrogateescape") for m in _STRING.finditer(event.args)]
            if paths:
                target = paths[0]
                dirs = [m.group(2) for m in _FD.finditer(event.args) if m.group(2) is not None]
                if name == "unlinkat" and dirs and not os.path.isabs(target):
                    target = os.path.join(_unhex(dirs[0]).decode(), target)
                rel = inside(target)
                if rel is not None:
                    files.pop(rel, None)
            continue
        rel = inside(path)
        if rel is None:
            continue
        if name in ("ftruncate", "truncate"):
            size = int(event.args.rsplit(",", 1)[1].strip())
            content = files.setdefault(rel, bytearray())
            del content[size:]
            content.extend(bytes(max(0, size - len(content))))
            continue
        if name in ("write", "writev", "pwrite64", "pwritev", "pwritev2"):
            data_ = b"".join(_strings(event.args))[:ret]
            if name in ("pwrite64", "pwritev"):
                offset = int(event.args.rsplit(", ", 1)[1])
            elif name == "pwritev2":
                offset = int(event.args.rsplit(", ", 2)[1])
            else:
                assert fd is not None
                offset = len(files.get(rel, b"")) if fd in appending else offsets.get(fd, 0)
                offsets[fd] = offset + len(data_)
            write_at(rel, offset, data_, event.exit)
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    for rel, content in files.items():
        out = data / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bytes(content))
    report.files = sorted(files)
    return report


# ---------------------------------------------------------------------------------------- start and cut

def _config(state: Path) -> dict[str, object]:
    try:
        loaded = json.loads((state / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PowerCutError(f"{state} holds no server started by `sidekick powercut start`") from None
    assert isinstance(loaded, dict)
    return loaded


def _argv(config: dict[str, object]) -> list[str]:
    command = config["command"]
    if not isinstance(command, list):
        raise PowerCutError("config.json: the command is not a list")
    return [str(a) for a in command]


def start(state: Path, *, data: Path | None = None, command: list[str] | None = None, model: str | None = None,
          log: Path | None = None) -> int:
    """Start the server under strace; the first start names ``data`` and ``command`` (kept in
    ``state``), later ones reuse them. Returns strace's pid."""
    strace = shutil.which("strace")
    if strace is None:
        raise PowerCutError("strace is not installed (Debian: apt-get install strace)")
    state.mkdir(parents=True, exist_ok=True)
    if command is not None:
        if data is None:
            raise PowerCutError("the first start needs --data DIR, the server's data directory")
        if model is not None and model not in MODELS:
            raise PowerCutError(f"unknown model {model!r} (one of {', '.join(MODELS)})")
        config: dict[str, object] = {"data": str(data.resolve()), "command": command, "cwd": os.getcwd(), "model": model or "power",
                  "log": str((log or state / "server.log").resolve())}
        (state / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    else:
        config = _config(state)
        if model is not None:
            config["model"] = model
            (state / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    data_dir = Path(str(config["data"]))
    if not data_dir.is_dir():
        raise PowerCutError(f"no data directory {data_dir}")
    base = state / "base"
    if base.exists():
        shutil.rmtree(base)
    shutil.copytree(data_dir, base, symlinks=True)
    argv = [strace, "-f", "-qq", "-y", "-xx", "--seccomp-bpf", "-s", str(STRING_LIMIT), "-e",
            f"trace={STRACE_CALLS}", "-o", str(state / "trace.txt"), "--", *[str(a) for a in _argv(config)]]
    with open(str(config["log"]), "ab") as out:
        process = subprocess.Popen(argv, cwd=str(config["cwd"]), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                   start_new_session=True)
    (state / "pid").write_text(str(process.pid), encoding="utf-8")
    return process.pid


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                todo.append(int(child))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop(state: Path, *, timeout: float = 30.0) -> None:
    """Kill the traced server (SIGKILL) and let strace write its last lines and exit."""
    try:
        pid = int((state / "pid").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return
    for child in _descendants(pid):
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    (state / "pid").unlink(missing_ok=True)


def cut(state: Path, *, model: str | None = None) -> CutReport:
    """Kill the server, rebuild its data directory as a power cut at its last DURABLE would leave it."""
    config = _config(state)
    stop(state)
    trace = state / "trace.txt"
    with trace.open(encoding="ascii", errors="replace") as lines:
        events = parse_trace(lines)
    cut_line, frames = durable_cut_line(events)
    report = rebuild(events, state / "base", Path(str(config["data"])), Path(str(config["cwd"])),
                     model=model or str(config["model"]), cut_line=cut_line, durable_frames=frames)
    with (state / "cuts.log").open("a", encoding="utf-8") as log:
        log.write(json.dumps(asdict(report)) + "\n")
    trace.replace(state / "trace.cut.txt")  # the last cut's trace, for a look afterwards
    return report

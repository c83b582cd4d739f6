"""``sidekick powercut``'s trace reader and rebuild, on traces written as strace writes them.

The power model keeps a write only if a sync of its file returned before the last DURABLE was
sent; the crash model keeps every write that returned before it; a send the kill caught inside
still counts as sent; the cut falls at the DURABLE frame whoever wrote what after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidekick_testbed.emulator.certify.powercut import durable_cut_line, parse_trace, rebuild
from sidekick_testbed.protocol.framing import encode_frame
from sidekick_testbed.protocol.messages import Durable, PushAck


def _hex(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def _fd(number: int, path: str) -> str:
    return f"{number}<{_hex(path.encode())}>"


def _trace(data: Path, *, sync_second: bool, durable_in_flight: bool = False) -> list[str]:
    db = _fd(3, str(data / "store.db"))
    sock = _fd(7, "socket:[4242]")
    ack = encode_frame(PushAck(1), 2)
    durable = encode_frame(Durable(9, 1, ()), 3)
    lines = [
        f'100 openat(AT_FDCWD, "{_hex(str(data / "store.db").encode())}", O_RDWR|O_CREAT, 0644) = {db}',
        f'100 pwrite64({db}, "{_hex(b"AAAA")}", 4, 0) = 4',
        f"101 fdatasync({db}) = 0",
        f'100 pwrite64({db}, "{_hex(b"BBBB")}", 4, 4 <unfinished ...>',
        f'101 sendto({sock}, "{_hex(ack)}", {len(ack)}, 0, NULL, 0) = {len(ack)}',
        "100 <... pwrite64 resumed>) = 4",
    ]
    if sync_second:
        lines.append(f"101 fdatasync({db}) = 0")
    if durable_in_flight:
        lines.append(f'101 sendto({sock}, "{_hex(durable)}", {len(durable)}, 0, NULL, 0')
        lines.append("101 +++ killed by SIGKILL +++")
    else:
        lines.append(f'101 sendto({sock}, "{_hex(durable)}", {len(durable)}, 0, NULL, 0) = {len(durable)}')
        lines.append(f"101 fdatasync({db}) = 0")  # after the DURABLE: too late
        lines.append(f'100 pwrite64({db}, "{_hex(b"CCCC")}", 4, 8) = 4')
    return lines


def _cut(tmp_path: Path, model: str, **kwargs: bool) -> tuple[bytes, int]:
    data, base = tmp_path / "data", tmp_path / "base"
    base.mkdir(exist_ok=True)
    events = parse_trace(_trace(data, **kwargs))
    line, frames = durable_cut_line(events)
    assert line is not None and frames == 1
    rebuild(events, base, data, tmp_path, model=model, cut_line=line, durable_frames=frames)
    return (data / "store.db").read_bytes(), line


def test_power_model_keeps_only_what_a_sync_covered_before_the_durable(tmp_path: Path) -> None:
    assert _cut(tmp_path, "power", sync_second=False)[0] == b"AAAA"
    assert _cut(tmp_path, "power", sync_second=True)[0] == b"AAAABBBB"


def test_crash_model_keeps_every_write_done_before_the_durable(tmp_path: Path) -> None:
    assert _cut(tmp_path, "crash", sync_second=False)[0] == b"AAAABBBB"


def test_a_durable_send_caught_by_the_kill_still_counts(tmp_path: Path) -> None:
    content, _ = _cut(tmp_path, "power", sync_second=False, durable_in_flight=True)
    assert content == b"AAAA"


def test_files_outside_the_data_directory_are_left_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "base").mkdir()
    log = _fd(4, str(tmp_path / "server.log"))
    events = parse_trace([f'100 write({log}, "{_hex(b"hello")}", 5) = 5'])
    report = rebuild(events, tmp_path / "base", data, tmp_path, model="crash")
    assert report.files == [] and report.writes_kept == 0


def test_usage_mistakes_are_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick_testbed.emulator.cli import main

    assert main(["powercut", "start", "--state", str(tmp_path / "s")]) == 2
    assert main(["powercut", "cut", "--state", str(tmp_path / "s")]) == 2
    assert main(["powercut", "start", "--state", str(tmp_path / "s"), "--", "true"]) == 2  # no --data
    err = capsys.readouterr().err
    assert err.count("sidekick: error:") == 3 and "Traceback" not in err


def test_calls_that_another_thread_interrupted_are_read_with_strace_padding(tmp_path: Path) -> None:
    """Two threads' calls interleave as ``<unfinished ...>`` and ``<... resumed>``, and strace pads a
    short resumed line with spaces before ``=``: a DURABLE sent that way is still the cut's DURABLE,
    and a sync returned that way still covers the writes before it."""
    data = tmp_path / "data"
    db = _fd(3, str(data / "store.db"))
    sock = _fd(7, "socket:[4242]")
    durable = encode_frame(Durable(9, 1, ()), 3)
    lines = [
        f'100 openat(AT_FDCWD, "{_hex(str(data / "store.db").encode())}", O_RDWR|O_CREAT, 0644) = {db}',
        f'100 pwrite64({db}, "{_hex(b"AAAA")}", 4, 0) = 4',
        f"100 fdatasync({db} <unfinished ...>",
        f'101 sendto({_fd(9, "socket:[99]")}, "\\x00", 1, 0, NULL, 0 <unfinished ...>',
        "100 <... fdatasync resumed>)            = 0",
        "101 <... sendto resumed>)               = 1",
        f'101 sendto({sock}, "{_hex(durable)}", {len(durable)}, 0, NULL, 0 <unfinished ...>',
        f'100 pwrite64({db}, "{_hex(b"BBBB")}", 4, 4) = 4',
        f"101 <... sendto resumed>)               = {len(durable)}",
    ]
    events = parse_trace(lines)
    assert all(event.result for event in events)  # every call returned
    line, frames = durable_cut_line(events)
    assert frames == 1 and line == 6
    base = tmp_path / "base"
    base.mkdir()
    rebuild(events, base, data, tmp_path, model="power", cut_line=line, durable_frames=frames)
    assert (data / "store.db").read_bytes() == b"AAAA"

"""The Wireshark dissector, run by the real tshark over captures this project writes, against
``sidekick frames decode`` on the same bytes: every golden vector (raw binding, one stream of them
all split across segments, and an HTTP exchange), every malformed vector, a whole fuzz trace, and
the captures of real connections (device sync, certify, serve)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fixtures
from sidekick_testbed.emulator.capture.tcp import HTTP_PORT, Capture
from sidekick_testbed.emulator.cli import main
from sidekick_testbed.emulator.sim.nemesis import Swarm
from sidekick_testbed.emulator.sim.options import SimOptions
from sidekick_testbed.emulator.sim.pcap import SimTap
from sidekick_testbed.emulator.sim.story import event_line
from sidekick_testbed.emulator.sim.trace import to_trace, write_trace
from sidekick_testbed.emulator.sim.world import World, run_world
from sidekick_testbed.emulator.wireshark import dissector_path
from tests.server_process import serve_process

GOLDEN = json.loads(fixtures.path("frames", "manifest.json").read_text())
MALFORMED = json.loads(fixtures.path("malformed", "manifest.json").read_text())
KINDS = {1: "CONTACT", 2: "EVENT", 3: "TODO", 4: "NOTE", 5: "PHOTO"}
TYPES = {0x01: "HELLO", 0x02: "CHALLENGE", 0x03: "AUTH", 0x04: "HELLO_OK", 0x10: "PUSH", 0x11: "PUSH_ACK",
         0x12: "COMMIT", 0x13: "DURABLE", 0x14: "CONFLICT", 0x20: "PULL", 0x21: "RECORDS", 0x22: "PULL_END",
         0x23: "PULL_ACK", 0x30: "BLOB_QUERY", 0x31: "BLOB_CHUNK", 0x32: "BLOB_ACK", 0x40: "PING", 0x41: "PONG",
         0x7E: "ERROR", 0x7F: "BYE"}
"""Message type codes and record kinds as docs/PROTOCOL.md sections 4 and 5 list them."""
LISTS = {"sidekick.push.changes", "sidekick.durable.assigned", "sidekick.records.records",
         "sidekick.contact.phones", "sidekick.contact.emails"}
"""Fields that count the items of a list (the items hang below them)."""
DROPPED = {"sidekick.blob_chunk.data_length"}
"""Fields the dissector shows that are not fields of the message (checked separately)."""
MAX_FRAME = str(1 << 20)
DECODE_ERRORS = {"BAD_CRC", "MALFORMED_PAYLOAD", "TRAILING_BYTES", "BAD_FIELD"}
"""Errors found in a frame whose header is sound (the reference decoder stops there)."""


# ------------------------------------------------------------------------------------------ tshark


@pytest.fixture(scope="module")
def tshark_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """tshark with a home of its own: no personal plugin or preference of this machine's user."""
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed (Debian package tshark; .ci/run installs it)")
    home = tmp_path_factory.mktemp("tshark-home")
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}


def tshark(env: dict[str, str], *args: str, lua: bool = True) -> str:
    first = list(args[:2]) if args[:1] == ("-G",) else []  # -G comes first
    command = ["tshark", *first, *(["-X", f"lua_script:{dissector_path()}"] if lua else []), *args[len(first):]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "Lua" not in done.stderr.replace('Running as user "root"', ""), done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def field_types(tshark_env: dict[str, str]) -> dict[str, str]:
    """The type of every field the dissector registers, as tshark lists them (-G fields)."""
    types = {}
    for line in tshark(tshark_env, "-G", "fields").splitlines():
        parts = line.split("\t")
        if parts[0] == "F" and parts[2].startswith("sidekick."):
            types[parts[2]] = parts[3]
    assert "sidekick.record.record_id" in types
    return types


def packets(env: dict[str, str], pcap: Path) -> list[dict[str, Any]]:
    text = tshark(env, "-r", str(pcap), "-T", "json", "--no-duplicate-keys")
    assert "_ws.lua.error" not in text and "Lua Error" not in text
    return [p["_source"]["layers"] for p in json.loads(text)]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def experts(obj: Any) -> list[str]:
    """Every expert message inside a (part of a) tshark JSON tree."""
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "_ws.expert":
                found += [e["_ws.expert.message"] for e in as_list(value)]
            else:
                found += experts(value)
    elif isinstance(obj, list):
        for item in obj:
            found += experts(item)
    return found


class Decoded:
    """tshark's JSON of the dissector's PDUs turned into ``frames decode --json`` objects."""

    def __init__(self, types: dict[str, str]) -> None:
        self.types = types

    def scalar(self, key: str, value: str) -> Any:
        kind = self.types[key]
        if kind.startswith(("FT_UINT", "FT_INT")):
            return int(value, 0)
        if kind == "FT_BYTES":
            return value.replace(":", "")
        assert kind == "FT_STRING", (key, kind)
        return value

    def struct(self, obj: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if key == "sidekick.record":  # the record of a change
                out["record"] = self.record(value)
                continue
            if key.endswith("_tree") or key == "_ws.expert" or not key.startswith(prefix):
                continue
            if key in DROPPED:
                continue
            name = key[len(prefix):]
            if key in LISTS:
                tree = obj.get(key + "_tree", {})
                items = [item for child in tree.values() for item in as_list(child)] if tree else []
                assert len(items) == int(value), key
                out[name] = [self.item(tree, item) for item in items]
            elif isinstance(value, dict):
                out[name] = self.struct(value, key + ".")
            else:
                out[name] = self.scalar(key, value)
        return out

    def item(self, tree: dict[str, Any], item: Any) -> Any:
        (key,) = tree.keys()
        if key == "sidekick.record":
            return self.record(item)
        if isinstance(item, dict):
            return self.struct(item, key + ".")
        return self.scalar(key, item)

    def record(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind = KINDS[int(obj["sidekick.record.kind"])]
        flags = int(obj["sidekick.record.flags"], 0)
        deleted = obj["sidekick.record.flags_tree"]["sidekick.record.deleted"] == "1"
        assert deleted == bool(flags & 1)
        conflict = obj.get("sidekick.record.conflict_of", "").replace(":", "")
        assert len(conflict) // 2 == int(obj["sidekick.record.conflict_of_length"])
        body_key = f"sidekick.{kind.lower()}"
        return {"record_id": obj["sidekick.record.record_id"].replace(":", ""),
                "version": int(obj["sidekick.record.version"]), "deleted": deleted, "conflict_of": conflict,
                "kind": kind, "body": self.struct(obj[body_key], body_key + ".")}

    def frame(self, pdu: dict[str, Any]) -> dict[str, Any]:
        name = TYPES[int(pdu["sidekick.type"], 0)]
        payload = pdu["sidekick.payload"] if isinstance(pdu.get("sidekick.payload"), dict) else {}
        fields = self.struct(payload, f"sidekick.{name.lower()}.")
        if name == "BLOB_CHUNK":
            assert int(payload["sidekick.blob_chunk.data_length"]) * 2 == len(fields["data"])
        return {"seq": int(pdu["sidekick.seq"]), "type": name, "version": int(pdu["sidekick.version"]),
                "flags": int(pdu["sidekick.flags"], 0), "size": 18 + int(pdu["sidekick.length"]), "fields": fields}


class Seen:
    """Per (TCP stream, source port): the dissector's frames and expert messages, packet by packet;
    and which directions ended (FIN from that port, or a reset of the stream)."""

    def __init__(self, layers_list: list[dict[str, Any]], decoded: Decoded) -> None:
        self.groups: dict[tuple[int, int], list[list[Any]]] = defaultdict(list)
        self.ended: set[tuple[int, int]] = set()
        self.payload: dict[tuple[int, int], bytes] = defaultdict(bytes)
        self.server_port: dict[int, int] = {}
        self.http: set[int] = set()
        for layers in layers_list:
            tcp = layers.get("tcp")
            if tcp is None:
                continue
            stream, src, dst = int(tcp["tcp.stream"]), int(tcp["tcp.srcport"]), int(tcp["tcp.dstport"])
            flags = tcp["tcp.flags_tree"]
            if flags["tcp.flags.syn"] == "1" and flags["tcp.flags.ack"] == "0":
                self.server_port[stream] = dst
            if "http" in layers:
                self.http.add(stream)
            if "tcp.payload" in tcp:
                self.payload[(stream, src)] += bytes.fromhex(tcp["tcp.payload"].replace(":", ""))
            items: list[Any] = []
            for pdu in as_list(layers.get("sidekick", [])):
                messages = experts(pdu)
                if "sidekick.magic" in pdu:  # a frame the dissector found in error is not converted
                    bad = any(m.split(":")[0] in DECODE_ERRORS for m in messages)
                    items.append({"frame in error": messages} if bad else decoded.frame(pdu))
                items += messages
            reset = flags["tcp.flags.reset"] == "1"
            if items:
                self.groups[(stream, src)].append(items)
                if reset:  # a reset ends both directions: what it says about either belongs to both
                    self.groups[(stream, dst)].append([m for m in items if isinstance(m, str)])
            if flags["tcp.flags.fin"] == "1" or reset:
                self.ended.add((stream, src))
            if reset:
                self.ended.add((stream, dst))

    def items(self, key: tuple[int, int]) -> list[Any]:
        return [item for group in self.groups.get(key, []) for item in group]


def frames_decode(data: bytes, tmp: Path) -> tuple[list[dict[str, Any]], str | None]:
    """``sidekick frames decode --json`` of ``data``: its frames and its error code (None: no error)."""
    path = tmp / "frames.bin"
    path.write_bytes(data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["frames", "decode", "--json", "--max-frame", MAX_FRAME, str(path)])
    frames = [json.loads(line) for line in out.getvalue().splitlines()]
    for frame in frames:
        del frame["offset"]
    if code == 0:
        return frames, None
    assert code == 2 and err.getvalue().startswith("error: "), err.getvalue()
    return frames, err.getvalue().split()[1]


def compare(seen: list[Any], data: bytes, tmp: Path, where: str, *, ended: bool = True) -> int:
    """The dissector's view of some bytes equals ``frames decode`` of them, up to the first error,
    whose code the dissector reports as expert info (a stream that has not ended is not TRUNCATED
    yet). Returns the frames compared."""
    expected, error = frames_decode(data, tmp)
    positions = [i for i, item in enumerate(seen) if isinstance(item, dict)]
    frames = [seen[i] for i in positions]
    assert frames[:len(expected)] == expected, where
    if error is None:
        assert len(frames) == len(expected), where
        return len(expected)
    later = seen[positions[len(expected) - 1] + 1:] if expected else seen
    codes = [m.split(":")[0] for m in later if isinstance(m, str)]
    assert error in codes or (error == "TRUNCATED" and not ended), \
        f"{where}: frames decode says {error}, the dissector {codes}"
    return len(expected)


def http_bodies(data: bytes) -> list[bytes]:
    """The bodies of the complete HTTP messages (Content-Length framed) of content type
    application/x-sidekick-frames in one direction."""
    bodies: list[bytes] = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return bodies
        head = data[:end].decode("latin-1").split("\r\n")
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
        try:
            length = int(fields.get("content-length", "0"))
        except ValueError:
            return bodies
        if len(data) < end + 4 + length:
            return bodies
        if fields.get("content-type", "").split(";")[0].strip().lower() == "application/x-sidekick-frames":
            bodies.append(data[end + 4:end + 4 + length])
        data = data[end + 4 + length:]


def check_capture(env: dict[str, str], pcap: Path, types: dict[str, str], tmp: Path) -> dict[str, int]:
    """Every direction of every TCP stream of ``pcap``: raw ones through ``compare``; HTTP ones
    (server port 7401, or HTTP found by tshark) body by body. Returns counts."""
    seen = Seen(packets(env, pcap), Decoded(types))
    counts = {"directions": 0, "frames": 0, "http_bodies": 0}
    for (stream, port), data in sorted(seen.payload.items()):
        where = f"{pcap.name} stream {stream} from port {port}"
        key = (stream, port)
        if stream in seen.http or seen.server_port.get(stream) == HTTP_PORT:
            bodies = [body for body in http_bodies(data) if body]
            groups = [g for g in seen.groups.get(key, []) if any(isinstance(i, dict) for i in g)]
            assert len(groups) == len(bodies), where
            for number, (body, group) in enumerate(zip(bodies, groups, strict=True)):
                counts["frames"] += compare(group, body, tmp, f"{where} body {number}")
            counts["http_bodies"] += len(bodies)
        else:
            counts["frames"] += compare(seen.items(key), data, tmp, where, ended=key in seen.ended)
        counts["directions"] += 1
    return counts


# ------------------------------------------------------------------------------------------ vectors


def golden_capture(path: Path) -> None:
    """One stream per golden vector and per malformed vector (device to server, then FIN); one
    stream of every golden vector back to back in 700-byte chunks (frames across segments, several
    frames in a segment); one HTTP exchange carrying all golden vectors both ways."""
    everything = b"".join(fixtures.path("frames", e["file"]).read_bytes() for e in GOLDEN)
    with path.open("wb") as out:
        capture = Capture(out)
        for folder, manifest in (("frames", GOLDEN), ("malformed", MALFORMED)):
            for entry in manifest:
                stream = capture.connect(1.0, f"{folder}/{entry['file']}")
                stream.data(1.0, True, fixtures.path(folder, entry["file"]).read_bytes())
                stream.fin(1.0, True)
        stream = capture.connect(2.0, "all-golden")
        for start in range(0, len(everything), 700):
            stream.data(2.0, True, everything[start:start + 700])
        stream.fin(2.0, True)
        stream.fin(2.0, False)
        stream = capture.connect(3.0, "http", server_port=HTTP_PORT)
        head = f"POST /sync HTTP/1.1\r\nHost: sidekick.test\r\nContent-Type: application/x-sidekick-frames\r\n" \
               f"Content-Length: {len(everything)}\r\n\r\n"
        stream.data(3.0, True, head.encode() + everything)
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/x-sidekick-frames\r\nContent-Length: {len(everything)}\r\n" \
               "X-Sidekick-Session: abc\r\n\r\n"
        stream.data(3.0, False, head.encode() + everything)
        stream.fin(3.0, True)
        stream.fin(3.0, False)


def test_golden_and_malformed_vectors_decode_as_frames_decode_does(
        tshark_env: dict[str, str], field_types: dict[str, str], tmp_path: Path) -> None:
    pcap = tmp_path / "vectors.pcapng"
    golden_capture(pcap)
    counts = check_capture(tshark_env, pcap, field_types, tmp_path)
    assert counts["frames"] >= 3 * len(GOLDEN) and counts["http_bodies"] == 2
    # every malformed vector: the error its manifest names, where the vector puts it
    layers_list = packets(tshark_env, pcap)
    found: dict[int, list[str]] = defaultdict(list)
    for layers in layers_list:
        if "tcp" in layers:
            found[int(layers["tcp"]["tcp.stream"])] += experts(layers.get("sidekick", []))
    for number, entry in enumerate(MALFORMED, len(GOLDEN)):
        codes = [m.split(":")[0] for m in found[number]]
        assert codes[:1] == [entry["code"]], (entry["file"], found[number])
    for number in range(len(GOLDEN)):
        assert found[number] == [] or all(m.startswith("ERROR ") for m in found[number]), found[number]
    # a sound capture: no TCP analysis warnings
    flagged = tshark(tshark_env, "-r", str(pcap), "-Y", "tcp.analysis.flags", lua=False)
    assert flagged.strip() == ""


def test_crc_mismatch_is_expert_info_with_requirement(tshark_env: dict[str, str], tmp_path: Path) -> None:
    pcap = tmp_path / "vectors.pcapng"
    golden_capture(pcap)
    bad_crc = next(n for n, e in enumerate(MALFORMED, len(GOLDEN)) if e["code"] == "BAD_CRC")
    text = tshark(tshark_env, "-r", str(pcap), "-Y", f"tcp.stream == {bad_crc} && sidekick.crc.bad", "-V")
    assert "BAD_CRC: CRC-32 is 0x" in text and "(R-FRAME-6)" in text and "CRC-32 status: Bad" in text


# ------------------------------------------------------------------------------------------ fuzz trace

HOSTILE = Swarm({"corrupt": 0.05, "duplicate": 0.03, "drop": 0.03, "truncate": 0.03, "reset": 0.02,
                 "delay": 0.05, "stall": 0.02, "power-cut": 6.0, "server-crash": 1.0, "server-restore": 1.0,
                 "partition": 1.0})
"""Every network fault at high rates, power cuts, server crashes and restores."""
FUZZ = SimOptions(accounts=2, devices=2, steps=60, swarm=HOSTILE, binding="mixed")
WANTED = {"power.cut", "net.corrupt", "net.truncate", "net.duplicate", "server.restore"}


@pytest.fixture(scope="module")
def fuzz_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """A fuzz trace and its capture by ``sidekick replay --pcap``: the first seed from 1 whose run
    under the hostile swarm holds a power cut, a corrupted, a truncated and a duplicated chunk, and
    a restore (as a campaign looks for interesting runs)."""
    folder = tmp_path_factory.mktemp("fuzz")
    for seed in range(1, 50):
        result = run_world(seed, FUZZ)
        if WANTED <= {e["kind"] for e in result.events}:
            break
    else:
        pytest.fail(f"no seed in 1..49 gives a run with {sorted(WANTED)}")
    trace = to_trace(result)
    path = write_trace(folder / f"seed-{seed}.trace.json", trace)
    pcap = folder / f"seed-{seed}.pcapng"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["replay", str(path), "--pcap", str(pcap)])
    assert code == 0, err.getvalue()
    assert "replayed exactly" in out.getvalue() and f"capture: {pcap}" in err.getvalue()
    return trace, pcap


def test_fuzz_trace_every_frame_decodes_as_frames_decode_does(
        tshark_env: dict[str, str], field_types: dict[str, str], fuzz_capture: tuple[dict[str, Any], Path],
        tmp_path: Path) -> None:
    trace, pcap = fuzz_capture
    counts = check_capture(tshark_env, pcap, field_types, tmp_path)
    assert counts["frames"] > 50 and counts["http_bodies"] > 5


def test_fuzz_trace_events_sit_where_they_happened(
        tshark_env: dict[str, str], fuzz_capture: tuple[dict[str, Any], Path]) -> None:
    trace, pcap = fuzz_capture
    events = trace["events"]
    rows = tshark(tshark_env, "-r", str(pcap), "-N", "n", "-T", "fields", "-e", "frame.time_epoch",
                  "-e", "syslog.msg", "-e", "tcp.stream", "-e", "ip.dst_host", "-e", "sidekick.seq",
                  "-e", "frame.comment", "-E", "occurrence=a", "-E", "aggregator=;")
    lines = [line.split("\t") for line in rows.splitlines()]
    assert [float(line[0]) for line in lines] == sorted(float(line[0]) for line in lines)  # the simulated clock
    on_segment = {"net.corrupt", "net.duplicate", "net.delay", "net.stall", "net.truncate", "net.reset"}
    # every event is a row at its time, in the timeline's order (a network fault that hit no later
    # packet of its connection is a row too, at the end)
    shown = [(float(t), msg) for t, msg, stream, *_ in lines if msg and not stream]
    fault_rows = [msg for _, msg in shown if msg.startswith("network fault:")]
    shown = [(t, msg) for t, msg in shown if not msg.startswith("network fault:")]
    expected = [e for e in events if e["kind"] not in on_segment | {"msg", "start", "end"}]
    assert len(shown) == len(expected)
    for (t, msg), event in zip(shown, expected, strict=True):
        named = event if "dev" in event or "device" not in event else {**event, "dev": event["device"]}
        assert abs(t - event["t"]) < 1e-6 and msg == " ".join((event_line(named) or event["kind"]).split())
    # a power cut sits after every frame its handset had received when it happened
    position = {id(event): n for n, event in enumerate(events)}
    row_at = {}
    for n, (_, msg, stream, *_rest) in enumerate(lines):
        if msg and not stream:
            row_at.setdefault(msg, []).append(n)
    cuts = [e for e in events if e["kind"] in ("power.cut", "user.cut")
            or (e["kind"] == "sync.fail" and "power" in e.get("why", ""))]
    assert cuts
    for cut in cuts:
        line = row_at[" ".join((event_line(cut) or "").split())].pop(0)
        device = cut["dev"]
        got = sum(len(frames.split(";")) for _, _, stream, host, frames, _ in lines[:line] if host == device and frames)
        received = sum(1 for e in events[:position[id(cut)]] if e["kind"] == "msg" and e.get("dev") == device
                       and e.get("dir") == "received")
        assert got >= received, (cut, got, received)
    # a network fault that hit a segment is a comment on a packet of its connection
    notes = defaultdict(list)
    for _, _, stream, _, _, comment in lines:
        if stream:
            notes[int(stream)] += [n for n in comment.split("\\n") if n.startswith("network fault:")]
    hits = [e for e in events if e["kind"] in on_segment]
    assert sum(len(n) for n in notes.values()) + len(fault_rows) == len(hits) and notes
    for hit in hits:
        what = f"network fault: {hit['kind'][4:]} "
        assert any(n.startswith(what) for n in notes[hit["conn"] - 1]) or any(r.startswith(what) for r in fault_rows)


def test_replay_capture_is_the_same_run_and_the_same_bytes(tmp_path: Path) -> None:
    """The tap changes nothing in the run, and a replay writes the same capture, byte for byte."""
    plain = run_world(11, FUZZ)
    tapped = World(11, FUZZ, tap=SimTap()).run()
    assert tapped.events == plain.events
    path = write_trace(tmp_path / "t.json", to_trace(plain))
    for name in ("a.pcapng", "b.pcapng"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(["replay", str(path), "--pcap", str(tmp_path / name)])
    assert (tmp_path / "a.pcapng").read_bytes() == (tmp_path / "b.pcapng").read_bytes()


def test_unknown_event_kinds_become_comments(tshark_env: dict[str, str], tmp_path: Path) -> None:
    trace = to_trace(run_world(3, SimOptions(accounts=1, devices=1, steps=6)))
    trace["events"].insert(3, {"t": trace["events"][3]["t"], "kind": "flash.program", "dev": "acct0.d0",
                               "block": 2, "page": 5})
    from sidekick_testbed.emulator.sim.pcap import write_capture

    write_capture(tmp_path / "x.pcapng", trace, SimTap())
    out = tshark(tshark_env, "-r", str(tmp_path / "x.pcapng"), "-T", "fields", "-e", "frame.comment")
    assert 'flash.program {"dev":"acct0.d0","block":2,"page":5}' in out


# ------------------------------------------------------------------------------------------ real connections


@contextlib.contextmanager
def running_server(tmp_path: Path, pcap_dir: Path) -> Iterator[tuple[int, int, Path]]:
    """``sidekick serve --pcap DIR`` in its own process on free ports; (tcp, http, key file)."""
    db, key = tmp_path / "s.db", tmp_path / "alice.key"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["accounts", "add", "alice", "--db", str(db), "--key-file", str(key)]) == 0
    with serve_process([sys.executable, "-m", "sidekick_testbed.emulator", "serve", "--db", str(db), "--tcp", "127.0.0.1:0",
                        "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--pcap", str(pcap_dir)]) as ports:
        yield ports["tcp"], ports["http"], key


def test_device_sync_certify_and_serve_write_captures(
        tshark_env: dict[str, str], field_types: dict[str, str], tmp_path: Path) -> None:
    caps = tmp_path / "server-captures"
    image = tmp_path / "phone.img"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(random.Random(5).randbytes(20_000))  # a blob spanning many segments
    with running_server(tmp_path, caps) as (tcp, http, key):
        def sk(*argv: str) -> int:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                return main(list(argv))

        assert sk("device", "--image", str(image), "init", "--account", "alice", "--key-file", str(key)) == 0
        assert sk("device", "--image", str(image), "add", "contact", "Ada Lovelace", "--phone", "+44") == 0
        assert sk("device", "--image", str(image), "add", "photo", str(photo), "--caption", "beach") == 0
        assert sk("device", "--image", str(image), "sync", "--server", f"127.0.0.1:{tcp}",
                  "--pcap", str(tmp_path / "raw.pcapng")) == 0
        assert sk("device", "--image", str(image), "add", "note", "after", "--text", "caf\u00e9") == 0
        assert sk("device", "--image", str(image), "sync", "--server", f"127.0.0.1:{http}", "--http",
                  "--pcap", str(tmp_path / "http.pcapng")) == 0
        assert sk("certify", f"127.0.0.1:{tcp}", "--account", "alice", "--key-file", str(key), "--quiet",
                  "--only", "malformed-06-bad-crc", "--only", "push-*", "--pcap", str(tmp_path / "certify.pcapng")) == 0
    device_side = [check_capture(tshark_env, tmp_path / name, field_types, tmp_path)
                   for name in ("raw.pcapng", "http.pcapng", "certify.pcapng")]
    assert device_side[0]["frames"] >= 10 and device_side[1]["http_bodies"] >= 8
    events = tshark(tshark_env, "-r", str(tmp_path / "certify.pcapng"), "-T", "fields", "-e", "syslog.msg",
                    "-Y", "syslog")
    assert "malformed-06-bad-crc]: pass" in events or "malformed-06-bad-crc: pass" in events
    server_files = sorted(caps.iterdir())
    assert len(server_files) == len({f.name for f in server_files}) >= 4
    server_frames = 0
    for path in server_files:
        server_frames += check_capture(tshark_env, path, field_types, tmp_path)["frames"]
    assert server_frames == sum(counts["frames"] for counts in device_side)  # both ends saw the same frames


# ------------------------------------------------------------------------------------------ install


def test_wireshark_install_puts_the_dissector_where_tshark_loads_it(
        tshark_env: dict[str, str], tmp_path: Path) -> None:
    pcap = tmp_path / "vectors.pcapng"
    golden_capture(pcap)
    env = {**tshark_env, "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config")}
    done = subprocess.run([sys.executable, "-m", "sidekick_testbed.emulator", "wireshark", "--install"], env=env, capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    installed = Path(done.stdout.split()[1].rstrip(";"))
    assert installed.read_bytes() == dissector_path().read_bytes() and str(tmp_path / "home") in str(installed)
    assert "HELLO seq=0" in tshark(env, "-r", str(pcap), "-Y", "sidekick", lua=False)
    done = subprocess.run([sys.executable, "-m", "sidekick_testbed.emulator", "wireshark", "--path"], capture_output=True, text=True,
                          check=False, timeout=60)
    assert Path(done.stdout.strip()) == dissector_path()

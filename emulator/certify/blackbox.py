"""Black-box fuzzing of a running server: seeded scripted devices over real sockets, and an oracle.

Devices of one account run random session scripts against the server (create, edit and delete
notes, push, commit or not, drop the connection at random points, retransmit, pull with small pages
and acknowledge or not). Retransmissions are dense: a DURABLE lost with its connection, a DURABLE
whose receipt the device loses (a power cut of the handset before it recorded it: the change is
pushed again), a PUSH repeated in its session. Rarer probes plant what only an unusual device does:
a record holding the copy id of a head a stale edit is about to overwrite, more than max_batch
changes between two COMMITs, a COMMIT of LSNs never pushed. With ``restart_cmd`` (kill -9) or
``power_cut_cmd`` the server is cut the moment a DURABLE arrives, and with ``restore_cmd`` it is
restored once, so durability is fuzzed too; devices that see a new generation run a recovery.
BUSY, and a fatal ERROR a server may end a session with (SHUTTING_DOWN, TIMEOUT, BUDGET_EXCEEDED,
STORAGE, INTERNAL), are legal: the device retries later.

Not deterministic (the server and the network are real), but every choice comes from one seeded
``random.Random``; ids are drawn from the seed and a per-campaign nonce (so a seed run again against
the same account never reuses a record id, R-REC-2), and the trace records every frame. The oracle:

* every change confirmed by DURABLE is readable by a fresh pull at the end: its record's head has
  the confirmed version (with the confirmed content) or a later one (R-DUR-3, R-CONFORM-1);
* a retransmitted change is never applied again: no CONFLICT for it, and DURABLE assigns it the
  version it first received, or 0 (R-IDEM-1, R-IDEM-2, R-DUR-6);
* a confirmed version that is no longer the head was superseded by a change based on it, or is kept
  as a conflict copy with its content (R-CONFLICT-6);
* within a generation, HELLO_OK never reports a durable_lsn below one DURABLE reported (R-DUR-5);
* HELLO_OK never reports an anchor above the last one the device acknowledged (R-PULL-8); pulls
  come in increasing version, inside (PULL.anchor, PULL_END.anchor] (R-PULL-2, R-PULL-3);
* every CONFLICT's copy is pullable (R-CONFLICT-5); DURABLE carries the session's generation;
* the probes get the answers the spec requires (R-LIMIT-4, R-DUR-4, R-CONFLICT-8);
* the server answers every request within the timeout and only with the answers the spec allows.

If the generation changes during the run, durable data may legally be gone: the report says so and
the first oracle is not applied to changes confirmed in the old generation.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from sidekick_testbed.emulator.certify.answers import Refused, expect_error
from sidekick_testbed.emulator.certify.changes import copy_id, note_change
from sidekick_testbed.emulator.certify.client import ServerViolation, Trace
from sidekick_testbed.emulator.certify.context import CheckContext, Device, Session
from sidekick_testbed.emulator.certify.target import Account, Target
from sidekick_testbed.emulator.certify.verdicts import Fail, Inconclusive, TraceEntry
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.messages import Change, Commit, PullAck, Push
from sidekick_testbed.protocol.records import Note, Record

__all__ = ["BlackboxReport", "blackbox_fuzz", "load_trace", "write_trace"]

TRACE_FORMAT = "sidekick-blackbox-trace/1"


@dataclass
class BlackboxReport:
    """What a black-box run did and found."""

    seed: int
    sessions: int = 0
    changes_pushed: int = 0
    changes_confirmed: int = 0
    conflicts: int = 0
    retransmits: int = 0
    refusals: int = 0
    restarts: int = 0
    restores: int = 0
    probes: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)
    generation_changed: bool = False
    duration: float = 0.0
    first_violation_s: float | None = None
    run_nonce: bytes = b""

    @property
    def ok(self) -> bool:
        """No violation found."""
        return not self.violations

    def summary(self) -> str:
        """One paragraph for people."""
        verdict = "no violation found" if self.ok else f"{len(self.violations)} violation(s)"
        lines = [f"black-box fuzz (seed {self.seed}): {self.sessions} sessions, {self.changes_pushed} changes "
                 f"pushed, {self.changes_confirmed} confirmed DURABLE, {self.retransmits} retransmitted, "
                 f"{self.conflicts} conflicts, {self.probes} probes, {self.restarts} restarts, {self.restores} "
                 f"restores, {self.refusals} legal refusals in {self.duration:.1f}s: {verdict}"]
        lines += [f"  VIOLATION: {v}" for v in self.violations]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class _Local:
    """A device's head of one record."""

    title: str
    deleted: bool
    base: int
    lsn: int
    dirty: bool


@dataclass
class _Confirmed:
    version: int
    title: str
    deleted: bool
    generation: int


@dataclass(frozen=True)
class Commands:
    """How the run may disturb the server (shell commands, as for ``sidekick certify``)."""

    restart: str | None = None
    power_cut: str | None = None
    restore: str | None = None

    @property
    def crash(self) -> list[tuple[str, str]]:
        return [(what, cmd) for what, cmd in (("restart", self.restart), ("power-cut", self.power_cut)) if cmd]


class _Fuzzer:
    def __init__(self, target: Target, account: Account, rng: random.Random, report: BlackboxReport,
                 run_nonce: bytes, commands: Commands) -> None:
        self.rng = rng
        self.report = report
        self.trace = Trace()
        self.ctx = CheckContext(target, rng, self.trace)
        self.commands = commands
        self.run_nonce = run_nonce
        # Fresh ids per run (the server remembers the ids of earlier runs); the nonce is the only
        # input not taken from the seed, and the trace records it.
        self.devices = [Device(account, self.fresh_id()) for _ in range(3)]
        self.local: dict[bytes, dict[bytes, _Local]] = {d.device_id: {} for d in self.devices}
        self.applied: dict[tuple[bytes, int], int] = {}   # (device, lsn) -> version first assigned
        self.confirmed: dict[bytes, _Confirmed] = {}      # record id -> latest confirmed version
        self.history: list[tuple[bytes, _Confirmed]] = []  # every confirmed (record id, version)
        self.based_on: set[tuple[bytes, int]] = set()      # (record id, base) of every change pushed
        self.acked: dict[bytes, int] = {}                  # device -> last anchor acknowledged
        self.told_durable: dict[bytes, int] = {}           # device -> HELLO_OK.durable_lsn this session
        self.best_durable: dict[bytes, int] = {}           # device -> highest durable_lsn told this generation
        self.copies: set[bytes] = set()
        self.pool: list[bytes] = []
        self.generation: int | None = None
        self.started = trio.current_time()
        self.restore_at = rng.randrange(8, 40) if commands.restore else None

    def fresh_id(self) -> bytes:
        """A record or device id from the seed and the run's nonce."""
        return hashlib.sha256(self.run_nonce + self.rng.randbytes(16)).digest()[:16]

    def violation(self, text: str) -> None:
        if self.report.first_violation_s is None:
            self.report.first_violation_s = trio.current_time() - self.started
        self.report.violations.append(text)
        self.trace.note(f"VIOLATION: {text}")

    # ------------------------------------------------------------------ local edits

    def edit(self, device: Device) -> None:
        heads = self.local[device.device_id]
        known = [rid for rid in self.pool if rid in heads]
        roll = self.rng.random()
        if not known or roll < 0.4:
            rid = self.fresh_id()
            self.pool.append(rid)
            heads[rid] = _Local(f"fuzz {rid.hex()[:6]} v1", False, 0, device.lsn(), True)
            return
        rid = self.rng.choice(known)
        head = heads[rid]
        deleted = roll > 0.9
        head.title, head.deleted, head.lsn, head.dirty = f"fuzz {rid.hex()[:6]} {self.rng.randrange(10**6)}", \
            deleted, device.lsn(), True

    def pending(self, device: Device) -> list[Change]:
        heads = self.local[device.device_id]
        dirty = sorted((h.lsn, rid) for rid, h in heads.items() if h.dirty)
        return [note_change(lsn, rid, heads[rid].title, base=heads[rid].base, deleted=heads[rid].deleted)
                for lsn, rid in dirty]

    def recover(self, device: Device) -> None:
        """A new generation: every head gets a fresh LSN, base 0, and is pushed again (R-GEN-6, R-GEN-10)."""
        for _, head in sorted(self.local[device.device_id].items(), key=lambda item: item[1].lsn):
            head.lsn, head.base, head.dirty = device.lsn(), 0, True
        self.acked.pop(device.device_id, None)
        self.best_durable.pop(device.device_id, None)

    # ------------------------------------------------------------------ one session

    async def open(self, device: Device) -> Session:
        session = await self.ctx.session(device)
        if self.generation is None:
            self.generation = session.generation
        elif session.generation != self.generation:
            self.report.generation_changed = True
            self.report.notes.append(f"the generation changed from {self.generation:#x} to {session.generation:#x}")
            self.generation = session.generation
            self.acked.clear()
            self.best_durable.clear()
            for each in self.devices:
                self.recover(each)
        told = session.hello_ok.durable_lsn
        self.told_durable[device.device_id] = told
        best = self.best_durable.get(device.device_id, 0)
        if told < best:
            self.violation(f"HELLO_OK.durable_lsn {told} below the {best} DURABLE reported in generation "
                           f"{session.generation:#x} (R-DUR-5)")
        acked = self.acked.get(device.device_id, 0)
        if session.hello_ok.anchor > acked:
            self.violation(f"HELLO_OK.anchor {session.hello_ok.anchor} above the last acknowledged anchor {acked} "
                           "(R-PULL-8)")
        return session

    async def session(self, device: Device) -> None:
        self.report.sessions += 1
        session = await self.open(device)
        for _ in range(self.rng.randrange(1, 4)):
            self.edit(device)
        changes = self.pending(device)[:max(1, session.challenge.max_batch // 2)]  # room for a retransmit
        if changes:
            self.based_on.update((c.record.record_id, c.base_version) for c in changes)
            self.report.retransmits += sum(1 for c in changes if (device.device_id, c.lsn) in self.applied
                                           or c.lsn <= self.told_durable[device.device_id])
            await session.push(changes)
            self.report.changes_pushed += len(changes)
            roll = self.rng.random()
            if roll < 0.1:
                await session.client.aclose()  # lost before COMMIT: the changes stay dirty
                return
            if roll < 0.25:
                await session.push(changes)  # a retransmit inside the session
            if 0.25 <= roll < 0.37:
                await session.client.send(Commit(changes[-1].lsn))  # DURABLE lost: the device will retransmit
                await session.client.aclose()
                return
            crash = bool(self.commands.crash) and self.rng.random() < 0.06
            await self.commit(session, device, changes, crash=crash, forget=0.37 <= roll < 0.6)
            if crash:
                return
            if self.rng.random() < 0.1:
                await session.client.aclose()
                return
        await self.pull(session, device)
        await session.bye()

    async def commit(self, session: Session, device: Device, changes: list[Change], *, crash: bool,
                     forget: bool) -> None:
        armed = None
        if crash:
            what, command = self.rng.choice(self.commands.crash)
            armed = await self.ctx.arm_command(command, what)
            self.report.restarts += 1
        conflicts, durable = await session.commit(changes[-1].lsn, on_durable=armed.fire if armed else None)
        if armed is not None:
            await armed.finish()
            await self.ctx.wait_ready(self.devices[0])
        if durable.generation != session.generation:
            self.violation(f"DURABLE generation {durable.generation:#x} differs from HELLO_OK's (R-DUR-4)")
        self.best_durable[device.device_id] = max(self.best_durable.get(device.device_id, 0), durable.durable_lsn)
        assigned = {a.lsn: a for a in durable.assigned}
        for conflict in conflicts:
            self.report.conflicts += 1
            self.copies.add(conflict.copy_id)
            if (device.device_id, conflict.lsn) in self.applied:
                self.violation(f"CONFLICT for the retransmitted LSN {conflict.lsn}, which an earlier DURABLE "
                               "confirmed: applied twice (R-IDEM-1)")
            elif conflict.lsn <= self.told_durable[device.device_id]:
                self.violation(f"CONFLICT for LSN {conflict.lsn}, which HELLO_OK reported durable (durable_lsn "
                               f"{self.told_durable[device.device_id]}): either the watermark covered a change never "
                               "applied (R-DUR-4) or the change was applied twice (R-IDEM-1)")
        heads = self.local[device.device_id]
        for change in changes:
            if change.lsn > durable.durable_lsn:
                continue
            entry = assigned.get(change.lsn)
            if entry is None:
                self.violation(f"DURABLE through {durable.durable_lsn} lacks an entry for LSN {change.lsn} (R-DUR-6)")
                continue
            key = (device.device_id, change.lsn)
            first = self.applied.get(key)
            if first is not None and entry.version not in (first, 0):
                self.violation(f"retransmitted LSN {change.lsn} assigned version {entry.version}, first {first}: "
                               "applied again (R-IDEM-1, R-IDEM-2)")
            if first is None:
                self.applied[key] = entry.version
                self.report.changes_confirmed += 1
            rid = change.record.record_id
            body = change.record.body
            title = body.title if isinstance(body, Note) else ""
            best = self.confirmed.get(rid)
            if entry.version:
                record = _Confirmed(entry.version, title, change.record.deleted, durable.generation)
                self.history.append((rid, record))
                if best is None or entry.version >= best.version:
                    self.confirmed[rid] = record
            head = heads.get(rid)
            if head is not None and head.lsn == change.lsn and not forget:  # forget: the receipt is lost
                head.dirty = False
                head.base = entry.version or head.base

    async def pull(self, session: Session, device: Device) -> None:
        anchor = session.hello_ok.anchor
        heads = self.local[device.device_id]
        for _ in range(50):
            result = await session.pull(anchor, self.rng.randrange(1, 20))
            versions = [r.version for r in result.records]
            if versions != sorted(set(versions)) or any(not anchor < v <= result.end.anchor for v in versions):
                self.violation(f"PULL from {anchor} returned versions {versions} with PULL_END.anchor "
                               f"{result.end.anchor} (R-PULL-2, R-PULL-3)")
            for record in result.records:
                head = heads.get(record.record_id)
                if head is None or not head.dirty:
                    body = record.body
                    heads[record.record_id] = _Local(body.title if isinstance(body, Note) else "", record.deleted,
                                                     record.version, 0, False)
                    if record.record_id not in self.pool and not record.conflict_of:
                        self.pool.append(record.record_id)
            if self.rng.random() < 0.1:
                return  # no PULL_ACK: the anchor must stay
            await session.client.send(PullAck(result.end.anchor))
            anchor = result.end.anchor
            self.acked[device.device_id] = max(self.acked.get(device.device_id, 0), anchor)
            if not result.end.more:
                return

    # ------------------------------------------------------------------ probes: unusual but legal devices

    async def probe(self) -> None:
        """One probe, chosen by the seed: what only an unusual device does."""
        self.report.probes += 1
        kind = self.rng.choice(("squat", "squat", "batch-total", "commit-unpushed"))
        if kind == "squat":
            await self.squat()
        elif kind == "batch-total":
            session = await self.ctx.session(Device(self.devices[0].account, self.fresh_id()), max_frame=1024)
            limit = session.challenge.max_batch
            for lsn in range(1, limit + 1):
                await session.push([note_change(lsn, self.fresh_id(), "")])
            await session.client.send(Push((note_change(limit + 1, self.fresh_id(), ""),)))
            try:
                await expect_error(session.client, ErrorCode.BATCH_TOO_LARGE, "R-LIMIT-4",
                                   f"PUSH number {limit + 1} since the last COMMIT (max_batch {limit})")
            except Fail as exc:
                self.violation(str(exc))
        else:
            session = await self.ctx.session(Device(self.devices[0].account, self.fresh_id()))
            _, durable = await session.commit(7)
            if durable.durable_lsn != 0 or durable.assigned:
                self.violation(f"COMMIT 7 from a new device that pushed nothing got DURABLE.durable_lsn "
                               f"{durable.durable_lsn}, assigned {len(durable.assigned)}: LSNs never received "
                               "reported durable (R-DUR-4)")
            await session.bye()

    async def squat(self) -> None:
        """A record holding the copy id a conflict is about to need; then the conflict (R-CONFLICT-8)."""
        a, b = self.devices[0], self.devices[1]
        rid = self.fresh_id()
        sa = await self.open(a)
        original = note_change(a.lsn(), rid, f"fuzz {rid.hex()[:6]} squat base")
        _, d1 = await sa.push_commit([original])
        v1 = next(x.version for x in d1.assigned if x.lsn == original.lsn)
        await sa.bye()
        sb = await self.open(b)
        edit = note_change(b.lsn(), rid, f"fuzz {rid.hex()[:6]} squat edit")
        _, d2 = await sb.push_commit([edit])
        v2 = next(x.version for x in d2.assigned if x.lsn == edit.lsn)
        squatter = note_change(b.lsn(), copy_id(rid, v2), f"fuzz {rid.hex()[:6]} squatter")
        _, d3 = await sb.push_commit([squatter])
        await sb.bye()
        for device, change, durable in ((a, original, d1), (b, edit, d2), (b, squatter, d3)):
            version = next(x.version for x in durable.assigned if x.lsn == change.lsn)
            body = change.record.body
            record = _Confirmed(version, body.title if isinstance(body, Note) else "", False, durable.generation)
            self.confirmed[change.record.record_id] = record
            self.history.append((change.record.record_id, record))
            self.applied[(device.device_id, change.lsn)] = version
        self.based_on.add((rid, v1))
        sa = await self.open(a)
        stale = note_change(a.lsn(), rid, f"fuzz {rid.hex()[:6]} squat stale edit", base=v1)
        await sa.push([stale])
        await self.commit(sa, a, [stale], crash=False, forget=False)
        await sa.bye()

    # ------------------------------------------------------------------ the oracle

    async def verify(self) -> None:
        reader = await self.ctx.session(Device(self.devices[0].account, self.fresh_id()))
        if self.generation is not None and reader.generation != self.generation:
            self.report.generation_changed = True
            self.report.notes.append("the generation changed before the final pull; confirmed data may be gone")
        lowest = min((c.version for _, c in self.history), default=1)
        heads, _ = await reader.pull_all(max(0, lowest - 1), tolerate_bad_anchor=True)
        for rid, confirmed in self.confirmed.items():
            if confirmed.generation != reader.generation:
                continue
            head = heads.get(rid)
            if head is None or head.version < confirmed.version:
                self.violation(f"record {rid.hex()} confirmed DURABLE at version {confirmed.version} is "
                               f"{'missing' if head is None else f'at version {head.version}'} in a fresh pull "
                               "(R-DUR-3, R-CONFORM-1)")
            elif head.version == confirmed.version:
                body = head.body
                title = body.title if isinstance(body, Note) else ""
                if (title, head.deleted) != (confirmed.title, confirmed.deleted):
                    self.violation(f"record {rid.hex()} at version {head.version} has other content than confirmed")
        for rid, old in self.history:
            head = heads.get(rid)
            if old.generation != reader.generation or head is None or head.version == old.version:
                continue
            if (rid, old.version) in self.based_on:
                continue
            kept = [heads.get(copy_id(rid, old.version, n)) for n in range(4)]
            if not any(c is not None and c.conflict_of == rid and isinstance(c.body, Note)
                       and (c.body.title, c.deleted) == (old.title, old.deleted) for c in kept):
                self.violation(f"version {old.version} of record {rid.hex()} was overwritten by a change not based "
                               "on it and no conflict copy keeps it (R-CONFLICT-6, R-CONFLICT-8)")
        await self.converge(heads)
        for copy_id_ in self.copies:
            if copy_id_ not in heads:
                self.violation(f"conflict copy {copy_id_.hex()} announced by CONFLICT is not pullable (R-CONFLICT-5)")
        await reader.bye()

    async def converge(self, heads: dict[bytes, Record]) -> None:
        """Each device pulls to the end in small pages; it must then hold every record up to its anchor."""
        for device in self.devices:
            session = await self.ctx.session(device)
            anchor = session.hello_ok.anchor
            local = self.local[device.device_id]
            for _ in range(10000):
                result = await session.pull(anchor, self.rng.randrange(1, 8))
                for record in result.records:
                    if record.record_id not in local or not local[record.record_id].dirty:
                        local[record.record_id] = _Local("", record.deleted, record.version, 0, False)
                await session.client.send(PullAck(result.end.anchor))
                anchor = result.end.anchor
                if not result.end.more:
                    break
            missing = [rid.hex()[:12] for rid, record in heads.items() if record.version <= anchor and rid not in local]
            if missing:
                self.violation(f"device {device.device_id.hex()[:8]} pulled to anchor {anchor} and never received "
                               f"{len(missing)} records below it, e.g. {missing[:3]} (R-PULL-3)")
            await session.bye()

    async def restore(self) -> None:
        """Restore the server from its backup: a new generation is required (R-GEN-1)."""
        assert self.commands.restore is not None
        self.report.restores += 1
        self.restore_at = None
        await self.ctx.run_command(self.commands.restore, "restore")
        await self.ctx.wait_ready(self.devices[0])


async def blackbox_fuzz(host: str, port: int, *, seed: int, budget_s: float, http: bool,
                        account: Account, timeout: float = 5.0, max_sessions: int | None = None,
                        run_nonce: bytes | None = None, restart_cmd: str | None = None,
                        power_cut_cmd: str | None = None, restore_cmd: str | None = None,
                        stop_at_first: bool = False) -> BlackboxReport:
    """Fuzz the server at ``host:port`` for ``budget_s`` seconds (Trio clock), or ``max_sessions``
    sessions if given first, with seeded scripted devices of ``account``; return the report.
    ``run_nonce`` (random if None) makes the ids new, so a seed can be run again against a server
    that remembers an earlier run; the commands disturb the server as in ``sidekick certify``."""
    report = BlackboxReport(seed)
    report.run_nonce = os.urandom(8) if run_nonce is None else run_nonce
    target = Target(host, port, http=http, accounts=(account,), timeout=timeout)
    rng = random.Random(seed)
    commands = Commands(restart_cmd, power_cut_cmd, restore_cmd)
    fuzzer = _Fuzzer(target, account, rng, report, report.run_nonce, commands)
    fuzzer.trace.note(f"run nonce {report.run_nonce.hex()}")
    for device in fuzzer.devices:
        fuzzer.trace.note(f"device {device.device_id.hex()}")
    start = trio.current_time()
    deadline = start + budget_s
    try:
        while trio.current_time() < deadline and (max_sessions is None or report.sessions < max_sessions):
            device = rng.choice(fuzzer.devices)
            try:
                if fuzzer.restore_at is not None and report.sessions >= fuzzer.restore_at:
                    await fuzzer.restore()
                elif rng.random() < 0.04:
                    await fuzzer.probe()
                else:
                    await fuzzer.session(device)
            except Refused as exc:  # BUSY, SHUTTING_DOWN, a legal fatal ERROR: retry later
                report.refusals += 1
                fuzzer.trace.note(f"legal refusal: {exc}")
                await trio.sleep(rng.uniform(0.01, 0.1))
            except (Fail, ServerViolation) as exc:
                fuzzer.violation(f"session of device {device.device_id.hex()[:8]}: {exc}")
            finally:
                await fuzzer.ctx.aclose()
            if len(report.violations) >= 10 or (stop_at_first and report.violations):
                break
        if not (stop_at_first and report.violations):
            await fuzzer.verify()
    except (Fail, ServerViolation) as exc:
        fuzzer.violation(f"final verification: {exc}")
    except Inconclusive as exc:
        report.notes.append(str(exc))
    finally:
        await fuzzer.ctx.aclose()
    report.trace = fuzzer.trace.entries
    report.duration = trio.current_time() - start
    return report


def write_trace(path: Path, report: BlackboxReport, options: dict[str, Any]) -> None:
    """The run as JSON lines: a header (seed, nonce, options: what a replay needs), then every entry."""
    with path.open("w", encoding="utf-8") as out:
        header = {"format": TRACE_FORMAT, "seed": report.seed, "run_nonce": report.run_nonce.hex(),
                  "options": options, "violations": report.violations}
        out.write(json.dumps(header) + "\n")
        for entry in report.trace:
            out.write(json.dumps({"t": round(entry.time, 4), "conn": entry.conn, "dir": entry.direction,
                                  "text": entry.text}) + "\n")


def load_trace(path: Path) -> dict[str, Any]:
    """The header of a trace written by ``write_trace``; ValueError if it is not one."""
    try:
        with path.open(encoding="utf-8") as source:
            header = json.loads(source.readline())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a black-box trace: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != TRACE_FORMAT:
        raise ValueError(f"{path} is not a black-box trace (no {TRACE_FORMAT} header)")
    return header

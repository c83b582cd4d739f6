"""Black-box fuzzing of a running server: seeded scripted devices over real sockets, and an oracle.

Devices of one account run random session scripts against the server (create, edit and delete
notes, push, commit or not, drop the connection at random points, retransmit, pull with small pages
and acknowledge or not, upload a photo in pieces). Not deterministic (the server and the network
are real), but every choice comes from one seeded ``random.Random`` and every frame sent and
received is recorded in the trace. The oracle:

* every change confirmed by DURABLE is readable by a fresh pull at the end: its record's head has
  the confirmed version (with the confirmed content) or a later one (R-DUR-3, R-CONFORM-1);
* a retransmitted change is never applied again: no CONFLICT for it, and DURABLE assigns it the
  version it first received, or 0 (R-IDEM-1, R-IDEM-2, R-DUR-6);
* a confirmed version that is no longer the head was superseded by a change based on it, or is kept
  as a conflict copy with its content (R-CONFLICT-6);
* a change whose LSN HELLO_OK reported durable draws no CONFLICT when pushed again (R-IDEM-1);
* HELLO_OK never reports an anchor above the last one the device acknowledged (R-PULL-8); pulls
  come in increasing version, inside (PULL.anchor, PULL_END.anchor] (R-PULL-2, R-PULL-3);
* every CONFLICT's copy is pullable (R-CONFLICT-5); DURABLE carries the session's generation;
* the server answers every request within the timeout and only with the answers the spec allows.

If the generation changes during the run, durable data may legally be gone: the report says so and
the first oracle is not applied to changes confirmed in the old generation.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field

import trio

from emulator.certify.checks_sync import copy_id
from emulator.certify.client import ServerViolation, Trace
from emulator.certify.context import Account, CheckContext, Device, Session, Target, note_change
from emulator.certify.framework import Fail, Inconclusive, TraceEntry
from protocol.messages import Change, Commit, PullAck
from protocol.records import Note, Record

__all__ = ["BlackboxReport", "blackbox_fuzz"]


@dataclass
class BlackboxReport:
    """What a black-box run did and found."""

    seed: int
    sessions: int = 0
    changes_pushed: int = 0
    changes_confirmed: int = 0
    conflicts: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)
    generation_changed: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """No violation found."""
        return not self.violations

    def summary(self) -> str:
        """One paragraph for people."""
        verdict = "no violation found" if self.ok else f"{len(self.violations)} violation(s)"
        lines = [f"black-box fuzz (seed {self.seed}): {self.sessions} sessions, {self.changes_pushed} changes "
                 f"pushed, {self.changes_confirmed} confirmed DURABLE, {self.conflicts} conflicts in "
                 f"{self.duration:.1f}s: {verdict}"]
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


class _Fuzzer:
    def __init__(self, target: Target, account: Account, rng: random.Random, report: BlackboxReport,
                 run_nonce: bytes) -> None:
        self.rng = rng
        self.report = report
        self.trace = Trace()
        self.ctx = CheckContext(target, rng, self.trace)
        # Fresh device ids per run (the server remembers the ids of earlier runs); the nonce is
        # the only input not taken from the seed, and the trace records the ids.
        self.devices = [Device(account, hashlib.sha256(run_nonce + rng.randbytes(16)).digest()[:16])
                        for _ in range(3)]
        self.local: dict[bytes, dict[bytes, _Local]] = {d.device_id: {} for d in self.devices}
        self.applied: dict[tuple[bytes, int], int] = {}   # (device, lsn) -> version first assigned
        self.confirmed: dict[bytes, _Confirmed] = {}      # record id -> latest confirmed version
        self.history: list[tuple[bytes, _Confirmed]] = []  # every confirmed (record id, version)
        self.based_on: set[tuple[bytes, int]] = set()      # (record id, base) of every change pushed
        self.acked: dict[bytes, int] = {}                  # device -> last anchor acknowledged
        self.told_durable: dict[bytes, int] = {}           # device -> HELLO_OK.durable_lsn this session
        self.copies: set[bytes] = set()
        self.pool: list[bytes] = []
        self.generation: int | None = None

    def violation(self, text: str) -> None:
        self.report.violations.append(text)
        self.trace.note(f"VIOLATION: {text}")

    # ------------------------------------------------------------------ local edits

    def edit(self, device: Device) -> None:
        heads = self.local[device.device_id]
        known = [rid for rid in self.pool if rid in heads]
        roll = self.rng.random()
        if not known or roll < 0.4:
            rid = self.rng.randbytes(16)
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

    # ------------------------------------------------------------------ one session

    async def session(self, device: Device) -> None:
        self.report.sessions += 1
        session = await self.ctx.session(device)
        if self.generation is None:
            self.generation = session.generation
        elif session.generation != self.generation:
            self.report.generation_changed = True
            self.report.notes.append(f"the generation changed from {self.generation:#x} to {session.generation:#x}")
            self.generation = session.generation
            self.acked.clear()
        self.told_durable[device.device_id] = session.hello_ok.durable_lsn
        acked = self.acked.get(device.device_id, 0)
        if session.hello_ok.anchor > acked:
            self.violation(f"HELLO_OK.anchor {session.hello_ok.anchor} above the last acknowledged anchor {acked} "
                           "(R-PULL-8)")
        for _ in range(self.rng.randrange(1, 4)):
            self.edit(device)
        changes = self.pending(device)[:max(1, session.challenge.max_batch // 2)]  # room for a retransmit
        if changes:
            self.based_on.update((c.record.record_id, c.base_version) for c in changes)
            await session.push(changes)
            self.report.changes_pushed += len(changes)
            if self.rng.random() < 0.15:
                await session.client.aclose()  # lost before COMMIT: the changes stay dirty
                return
            if self.rng.random() < 0.2:
                await session.push(changes)  # a retransmit inside the session
            if self.rng.random() < 0.15:
                await session.client.send(Commit(changes[-1].lsn))  # DURABLE lost: the device will retransmit
                await session.client.aclose()
                return
            await self.commit(session, device, changes)
            if self.rng.random() < 0.1:
                await session.client.aclose()
                return
        await self.pull(session, device)
        await session.bye()

    async def commit(self, session: Session, device: Device, changes: list[Change]) -> None:
        conflicts, durable = await session.commit(changes[-1].lsn)
        if durable.generation != session.generation:
            self.violation(f"DURABLE generation {durable.generation:#x} differs from HELLO_OK's (R-DUR-4)")
        assigned = {a.lsn: a for a in durable.assigned}
        for conflict in conflicts:
            self.report.conflicts += 1
            self.copies.add(conflict.copy_id)
            if (device.device_id, conflict.lsn) in self.applied or conflict.lsn <= self.told_durable[device.device_id]:
                self.violation(f"CONFLICT for the retransmitted LSN {conflict.lsn}: applied twice (R-IDEM-1)")
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
                self.violation(f"retransmitted LSN {change.lsn} assigned version {entry.version}, first {first} "
                               "(R-IDEM-2)")
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
            if head is not None and head.lsn == change.lsn:
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

    # ------------------------------------------------------------------ the oracle

    async def verify(self) -> None:
        reader = await self.ctx.session(Device(self.devices[0].account, self.rng.randbytes(16)))
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
            copy = heads.get(copy_id(rid, old.version))
            copy_title = copy.body.title if copy is not None and isinstance(copy.body, Note) else None
            if copy is None or (copy_title, copy.deleted) != (old.title, old.deleted):
                self.violation(f"version {old.version} of record {rid.hex()} was overwritten by a change not based "
                               "on it and no conflict copy keeps it (R-CONFLICT-6)")
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


async def blackbox_fuzz(host: str, port: int, *, seed: int, budget_s: float, http: bool,
                        account: Account, timeout: float = 5.0, max_sessions: int | None = None,
                        run_nonce: bytes | None = None) -> BlackboxReport:
    """Fuzz the server at ``host:port`` for ``budget_s`` seconds (Trio clock), or ``max_sessions``
    sessions if given first, with seeded scripted devices of ``account``; return the report.
    ``run_nonce`` (random if None) makes the device ids new, so a seed can be run again against a
    server that remembers an earlier run."""
    report = BlackboxReport(seed)
    target = Target(host, port, http=http, accounts=(account,), timeout=timeout)
    rng = random.Random(seed)
    fuzzer = _Fuzzer(target, account, rng, report, os.urandom(8) if run_nonce is None else run_nonce)
    for device in fuzzer.devices:
        fuzzer.trace.note(f"device {device.device_id.hex()}")
    start = trio.current_time()
    deadline = start + budget_s
    try:
        while trio.current_time() < deadline and (max_sessions is None or report.sessions < max_sessions):
            device = rng.choice(fuzzer.devices)
            try:
                await fuzzer.session(device)
            except (Fail, ServerViolation) as exc:
                fuzzer.violation(f"session of device {device.device_id.hex()[:8]}: {exc}")
            finally:
                await fuzzer.ctx.aclose()
            if len(report.violations) >= 10:
                break
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

"""The fleet engine: many handsets, their users, radio links and the server, in one ``trio.run``.

One root seed gives every component its own ``random.Random`` (``emulator.seeding.derive_rng``). Time is a
``SimClock``: virtual, it jumps whenever every task waits, so a simulated day passes as fast as the
work in it allows, and its alarms time the radio links and the scheduler. A single scheduler task
takes ``(time, seq, device, action, server event)`` from a heap: idle handsets cost no task; an event a sync
task pushes while the scheduler sleeps (a retry) rings the scheduler's alarm earlier, and an end
event keeps the heap from running dry before the end. A user change schedules a sync
``sync_delay`` later (coalesced); every handset also syncs every ``sync_interval``. A sync is a
task in a nursery (one per handset at a time) over a ``RadioLink`` to the in-process
``SyncServer`` on ``SimulatedStorage``. Server events come from the scenario. Every
``sample_every`` seconds the fleet is sampled. At the end the fleet heals (server up, no drops or
partitions, every handset on and synced) and the ledger counts the versions lost.

``run_shard`` runs the accounts of one shard (all of them by default) and returns a ``FleetPart``;
``fleet_report`` adds the parts up into the JSON report; ``run_fleet(jobs=N)`` runs N shards on
an executor (``emulator.executor``: local worker processes or a Dask cluster). Accounts share
nothing but the server, which treats each apart, so the report is the same for any N.

What a run simulates is ``fleet.config``; what the users write, ``fleet.bodies``; the state of a
handset and the heap's event kinds, ``fleet.state``; a shard's figures and the report, ``fleet.parts``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import heapq
import math
from collections.abc import Callable
from typing import Any

import trio

from sidekick_testbed.emulator.executor import Executor, Report, open_executor
from sidekick_testbed.emulator.flash import Geometry, NandFlash, PowerLoss
from sidekick_testbed.emulator.fleet.bodies import edited_body, new_body, photo_bytes
from sidekick_testbed.emulator.fleet.config import HANDSETS, PAGES_PER_BLOCK, FleetConfig, FleetRun
from sidekick_testbed.emulator.fleet.ledger import ContentKey, Ledger, content_key
from sidekick_testbed.emulator.fleet.metrics import FleetMetrics, LossEvent, Sample, SyncRecord
from sidekick_testbed.emulator.fleet.parts import FleetPart, fleet_report
from sidekick_testbed.emulator.fleet.radio import Coverage, LinkTally, RadioWorld, radio_connector
from sidekick_testbed.emulator.fleet.scenario import ServerEvent
from sidekick_testbed.emulator.fleet.state import Action, FleetDevice, LedgerStorage, RegressionCounter
from sidekick_testbed.emulator.handset import Handset, HandsetError
from sidekick_testbed.emulator.handset.sync_client import SyncError
from sidekick_testbed.emulator.seeding import derive_rng, seeded_trio_scheduler
from sidekick_testbed.emulator.sim.clock import Alarm, SimClock
from sidekick_testbed.emulator.sim.flash_reader import FlashReader
from sidekick_testbed.emulator.store import StoreError, StoreFull
from sidekick_testbed.protocol.records import RecordKind
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimSnapshot, SimulatedStorage

__all__ = ["run_fleet", "run_shard"]

_KIND_NAMES = {k: k.name.lower() for k in RecordKind}


class _Fleet:
    """The state of one run (see the module docstring)."""

    def __init__(self, config: FleetConfig, progress: Callable[[float, dict[str, Any]], None] | None,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.config = config
        self.progress = progress
        self.workload = config.workload
        self.metrics = FleetMetrics(duration=config.duration)
        self.accounts = [f"user{i:05d}" for i in range(config.account_count)]
        self.own_accounts = [i for i in range(config.account_count) if i % shard[1] == shard[0]]
        """The accounts this process simulates (every one unless the run is split into shards)."""
        self.ledger = Ledger(len(self.accounts))
        self.events_rng = derive_rng(config.seed, "server-events")
        self.storage = LedgerStorage(SimulatedStorage(derive_rng(config.seed, "storage"), pack_blobs=True), self.ledger,
                                {name: i for i, name in enumerate(self.accounts)})
        self.server = SyncServer(self.storage, limits=Limits(max_sessions=1 << 30),
                                 rng=derive_rng(config.seed, "server"))
        self.mutants = HANDSETS[config.handset]
        self.geometry = Geometry(pages_per_block=PAGES_PER_BLOCK,
                                 blocks=config.handset_blocks)
        self.observer = RegressionCounter(self.metrics)
        self.reader = FlashReader(keep_views=False, max_pages=0)
        """Reads handsets' chips for the loss accounting (no cache: fleets hold many chips)."""
        self.devices: dict[int, FleetDevice] = {}
        """This shard's handsets by their index in the whole fleet."""
        self.by_account: list[list[int]] = [[] for _ in self.accounts]
        self.heap: list[tuple[float, int, int, Action, int]] = []
        self.wakeup: Alarm | None = None
        """The scheduler's alarm while it sleeps until the earliest event."""
        self.seq = 0
        self.backups: dict[float, SimSnapshot] = {}
        self.down_until = -math.inf
        self.store_full = 0
        self.errors: dict[str, int] = {}
        self.events_processed = 0
        self.kinds = [k for k, rate in self.workload.per_day.items() if rate > 0]
        self.kind_rates = [self.workload.per_day[k] for k in self.kinds]
        self.change_rate = sum(self.kind_rates) / 86400
        self.reboot_rate = self.workload.reboots_per_day / 86400
        self.clock = SimClock()
        self.world: RadioWorld
        self.syncs: trio.Nursery

    # ------------------------------------------------------------------ setup

    async def provision(self) -> None:
        config = self.config
        own = set(self.own_accounts)
        for account in self.own_accounts:
            name = self.accounts[account]
            await self.storage.inner.add_account(name, hashlib.sha256(b"key/" + name.encode()).digest())
        for index in range(config.devices):
            account = index % len(self.accounts)
            if account not in own:
                continue
            profile = config.network.assign(index, config.devices)
            name = self.accounts[account]
            handset = Handset.create(
                NandFlash(self.geometry, op_log_len=0, pack_pages=True),  # no op log; photos compress
                device_id=hashlib.sha256(f"device/{index}".encode()).digest()[:16], account=name,
                key=hashlib.sha256(b"key/" + name.encode()).digest(),
                rng=derive_rng(config.seed, "handset", index), mutants=self.mutants, name=f"handset{index}",
                observer=self.observer,
            )
            coverage = Coverage(profile, derive_rng(config.seed, "coverage", index))
            tally = LinkTally()
            connector = radio_connector(self.server.serve_stream, profile, coverage,
                                        derive_rng(config.seed, "radio", index), tally, self.world)
            device = FleetDevice(index, account, profile, handset, derive_rng(config.seed, "user", index), coverage,
                             connector, tally)
            self.devices[index] = device
            self.by_account[account].append(index)
            for kind, count in self.workload.initial.items():
                for _ in range(count):
                    self._create(device, kind, 0.0)
            self._next_change(device, 0.0)
            self._next_power_off(device, 0.0)
            # periodic syncs: handset i of n first at (i + 1/2) / n of the interval, then every interval
            device.periodic_at = (index + 0.5) / config.devices * self.workload.sync_interval
            self._schedule_sync(device, device.periodic_at)
        for event_index, event in enumerate(self.config.scenario.events):
            self._push(event.at, -1, Action.SERVER_EVENT, event_index)
        for at in self.config.scenario.backup_times:
            self._push(at, -1, Action.BACKUP)
        t = 0.0
        while t <= config.duration:
            self._push(t, -1, Action.SAMPLE)
            t += config.sample_every
        # The end: the heap is never empty before it, so the scheduler is there to take what a
        # running sync schedules (a retry) however quiet the fleet is.
        self._push(config.duration, -1, Action.END)

    def _push(self, at: float, device: int, action: Action, event: int = -1) -> None:
        """Schedule ``action`` at ``at`` for handset ``device`` (-1: none), or the scenario's
        server event number ``event`` (``Action.SERVER_EVENT``)."""
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, device, action, event))
        wakeup = self.wakeup
        if wakeup is not None and at < wakeup.at:  # pushed by a sync task while the scheduler sleeps
            self.clock.ring(wakeup, at)

    def _next_change(self, device: FleetDevice, now: float) -> None:
        if self.change_rate > 0:
            self._push(now + device.user_rng.expovariate(self.change_rate), device.index, Action.CHANGE)

    def _next_power_off(self, device: FleetDevice, now: float) -> None:
        if self.reboot_rate > 0:
            self._push(now + device.user_rng.expovariate(self.reboot_rate), device.index, Action.POWER_OFF)

    def _schedule_sync(self, device: FleetDevice, at: float) -> None:
        if at < device.sync_due:
            device.sync_due = at
            self._push(at, device.index, Action.SYNC)

    # ------------------------------------------------------------------ the scheduler

    async def run(self) -> None:
        duration = self.config.duration
        heap = self.heap
        while heap:
            at = heap[0][0]
            if at > duration:
                break
            if at > self.clock.current_time():
                # Sleep until the earliest event; ``_push`` rings earlier for an earlier one.
                self.wakeup = Alarm(at)
                await self.clock.wait(self.wakeup)
                self.wakeup = None
                continue
            at, _, index, action, event = heapq.heappop(heap)
            self.events_processed += 1
            if index >= 0:
                device = self.devices[index]
                if action is Action.CHANGE:
                    self._user_change(device)
                elif action is Action.SYNC:
                    if at == device.sync_due:
                        device.sync_due = math.inf
                        self._start_sync(device)
                elif action is Action.POWER_OFF:
                    self._power_off(device, self._off_time(device))
                    self._next_power_off(device, at)
                elif action is Action.POWER_ON:
                    self._power_on(device)
            elif action is Action.SAMPLE:
                self._sample()
            elif action is Action.END:
                break
            elif action is Action.BACKUP:
                self.backups[at] = self.storage.inner.backup()
            elif action is Action.SLOW_END:
                self.storage.commit_delay = 0.0
            elif action is Action.OUTAGE_END:
                self.world.server_up = at >= self.down_until
            elif action is Action.SERVER_EVENT:
                self._server_event(self.config.scenario.events[event])

    # ------------------------------------------------------------------ users

    def _user_change(self, device: FleetDevice) -> None:
        now = trio.current_time()
        self._next_change(device, now)
        handset = device.handset
        if not handset.powered:
            return
        rng = device.user_rng
        kind = rng.choices(self.kinds, self.kind_rates)[0]
        ids = device.live.setdefault(kind, [])
        roll = rng.random()
        try:
            if ids and roll < self.workload.delete_fraction:
                record_id = ids.pop(rng.randrange(len(ids)))
                head = handset.store.get(record_id)
                if head is None or head.record.deleted:
                    return
                handset.delete(record_id)
                self.ledger.wrote(device.account, device.index, record_id, _KIND_NAMES[kind], head.record.body,
                                  deleted=True, now=now)
            elif ids and roll < self.workload.delete_fraction + self.workload.edit_fraction:
                record_id = ids[rng.randrange(len(ids))]
                head = handset.store.get(record_id)
                if head is None or head.record.deleted:
                    ids.remove(record_id)
                    return
                device.serial += 1
                body = edited_body(head.record.body, device.serial)
                handset.edit(record_id, body)
                self.ledger.wrote(device.account, device.index, record_id, _KIND_NAMES[kind], body,
                                  deleted=False, now=now)
            else:
                self._create(device, kind, now)
        except StoreFull:
            self.store_full += 1
            return
        except StoreError as exc:
            self._note_error(exc)
            return
        except (PowerLoss, HandsetError):
            return
        self.metrics.user_changes += 1
        device.dirty = True
        self._schedule_sync(device, now + self.workload.sync_delay)

    def _create(self, device: FleetDevice, kind: RecordKind, now: float) -> None:
        """The user creates a record of ``kind`` (a photo: takes one)."""
        handset = device.handset
        if kind is RecordKind.PHOTO:
            data = photo_bytes(device.user_rng, self.workload.photo_bytes)
            device.serial += 1
            record_id = handset.take_photo(f"photo {device.index}-{device.serial}", data)
            head = handset.store.get(record_id)
            assert head is not None
            body = head.record.body
        else:
            device.serial += 1
            body = new_body(kind, device.index, device.serial)
            record_id = handset.add(body)
        device.live.setdefault(kind, []).append(record_id)
        self.ledger.wrote(device.account, device.index, record_id, _KIND_NAMES[kind], body, deleted=False, now=now)

    # ------------------------------------------------------------------ power

    def _off_time(self, device: FleetDevice) -> float:
        """How long a handset stays off after a power cut: 1 to 10 minutes."""
        return float(device.user_rng.uniform(60.0, 600.0))

    def _power_off(self, device: FleetDevice, off_for: float) -> None:
        if not device.handset.powered:
            return
        device.handset.power_cut()
        self._push(trio.current_time() + off_for, device.index, Action.POWER_ON)

    def _power_on(self, device: FleetDevice) -> None:
        handset = device.handset
        if handset.powered:
            return
        try:
            handset.reboot()
        except (StoreError, PowerLoss) as exc:  # the store did not mount: counted as a handset error
            self._note_error(exc)
            self._check_losses(device.account)  # what its chip no longer holds is gone
            return
        self.metrics.reboots += 1
        meta = handset.store.meta
        device.seen_anchor = meta.anchor
        device.live = {}  # what the user sees after the boot, whatever the handset kept
        for version in handset.live_records():
            device.live.setdefault(version.record.kind, []).append(version.record.record_id)
        self._check_losses(device.account)
        self._schedule_sync(device, trio.current_time() + self.workload.sync_delay)

    def _holdings(self, index: int) -> set[ContentKey]:
        """What the handset's flash holds, read by the oracle's own reader (powered or not; the
        store's index and the chip are never consulted or touched)."""
        chip = self.reader.read(self.devices[index].handset.flash)
        held: set[ContentKey] = set()
        for head in chip.heads.values():
            try:
                key = content_key(head.record)
            except ValueError:
                continue  # a head that does not decode holds nothing
            if key is not None:
                held.add(key)
        return held

    def _check_losses(self, account: int) -> None:
        if not any(not v.durable and v.lost_at is None for v in self.ledger.latest[account].values()):
            return
        holds = {index: self._holdings(index) for index in self.by_account[account]}
        self.ledger.check_account(account, holds, trio.current_time())

    # ------------------------------------------------------------------ syncs

    def _start_sync(self, device: FleetDevice) -> None:
        if device.syncing:
            device.dirty = True
            return
        if not device.handset.powered:
            return
        device.syncing = True
        device.dirty = False
        self.syncs.start_soon(self._sync, device)

    async def _sync(self, device: FleetDevice) -> None:
        tally = device.tally
        tally.bytes_up = tally.bytes_down = tally.connections = tally.drops = 0
        started = trio.current_time()
        ok = False
        frames = conflicts = attempts = 0
        try:
            report = await device.handset.sync(device.connector, attempts=self.config.attempts)
        except SyncError as exc:
            attempts = getattr(exc, "attempts", 1)
        except (HandsetError, PowerLoss):
            attempts = 1
        except StoreFull:
            self.store_full += 1
            attempts = 1
        except Exception as exc:  # a bug below must not end the run: it is counted and named
            self._note_error(exc)
            attempts = 1
        else:
            ok = True
            frames = report.frames_sent + report.frames_received
            conflicts = len(report.conflicts)
            attempts = report.attempts
            device.seen_generation = report.generation
            device.seen_anchor = report.anchor
        finally:
            device.syncing = False
        now = trio.current_time()
        self.metrics.syncs.append(SyncRecord(started, device.index, device.profile.name, now - started, ok,
                                             tally.bytes_up, tally.bytes_down, frames, conflicts, attempts))
        if now > self.config.duration:
            return
        interval = self.workload.sync_interval
        while device.periodic_at <= now:
            device.periodic_at += interval
        if ok:
            device.failures = 0
            if device.dirty:
                self._schedule_sync(device, now + self.workload.sync_delay)
            self._schedule_sync(device, device.periodic_at)
        elif device.handset.powered:
            device.failures += 1
            wait = min(interval, self.config.retry_base * 2 ** (device.failures - 1))
            self._schedule_sync(device, now + wait * device.user_rng.uniform(0.75, 1.25))

    def _note_error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"[:160]
        self.errors[text] = self.errors.get(text, 0) + 1

    # ------------------------------------------------------------------ server events

    def _server_event(self, event: ServerEvent) -> None:
        now = trio.current_time()
        inner = self.storage.inner
        self.metrics.server_events.append({"at": event.at, "kind": event.kind, "description": event.describe()})
        if event.kind == "crash":
            inner.crash()
            self.world.break_all()
        elif event.kind == "outage":
            self.down_until = max(self.down_until, now + event.duration)
            self.world.server_up = False
            self.world.break_all()
            self._push(now + event.duration, -1, Action.OUTAGE_END)
        elif event.kind in ("restore", "silent-rollback"):
            snapshot = self.backups[event.backup_at]
            silent = event.kind == "silent-rollback"
            already = inner.faults.on("silent-rollback")
            if silent:
                inner.faults.enable("silent-rollback")
            inner.restore(snapshot)
            if silent and not already:
                inner.faults.disable("silent-rollback")
            self.world.break_all()
            self._after_restore()
        elif event.kind == "slow-disk":
            self.storage.commit_delay = event.commit_delay
            self._push(now + event.duration, -1, Action.SLOW_END)
        elif event.kind == "fleet-reboot":
            devices = self.config.devices  # drawn over the whole fleet: every shard draws the same
            for index in sorted(self.events_rng.sample(range(devices), max(1, round(event.fraction * devices)))):
                device = self.devices.get(index)
                if device is not None:
                    self._power_off(device, self._off_time(device))

    def _after_restore(self) -> None:
        for index in self.own_accounts:
            durable = self.storage.inner.durable_records(self.accounts[index])
            self.ledger.server_now_holds(index, durable)
            self.storage.versions[index] = max((r.version for r in durable), default=0)
        self.ledger.reorder()
        for account in self.own_accounts:
            self._check_losses(account)

    # ------------------------------------------------------------------ samples

    def _sample(self) -> None:
        now = trio.current_time()
        generation = self.storage.generation
        versions = self.storage.versions
        out_of_date = 0
        for device in self.devices.values():
            if device.seen_anchor != versions[device.account] or (
                    device.seen_generation not in (0, generation)):
                out_of_date += 1
        sample = Sample(now, len(self.ledger.at_risk), self.ledger.oldest_at_risk(now), out_of_date,
                        self.world.server_up, len(self.ledger.losses))
        self.metrics.samples.append(sample)
        if self.progress is not None:
            self.progress(now, {"at risk": sample.at_risk, "lost": sample.lost_so_far,
                                "syncs": len(self.metrics.syncs)})

    # ------------------------------------------------------------------ the end

    async def heal(self) -> int:
        """Server up, no drops or partitions, every handset on; every handset syncs until clean."""
        self.world.server_up = True
        self.world.drops = False
        self.world.partitions = False
        self.storage.commit_delay = 0.0
        healed = 0
        for device in self.devices.values():
            if not device.handset.powered:
                self._power_on(device)
        limiter = trio.CapacityLimiter(256)

        async def one(device: FleetDevice) -> None:
            nonlocal healed
            async with limiter:
                for _ in range(3):
                    try:
                        await device.handset.sync(device.connector, attempts=self.config.attempts)
                    except (SyncError, HandsetError, PowerLoss):
                        continue
                    except Exception as exc:
                        self._note_error(exc)
                        continue
                    healed += 1
                    return

        # two rounds: the second brings every handset the changes the others pushed in the first
        for _ in range(2):
            async with trio.open_nursery() as nursery:
                for device in self.devices.values():
                    nursery.start_soon(one, device)
        return healed

    def final_losses(self) -> None:
        now = trio.current_time()
        for index in self.own_accounts:
            records = self.storage.inner.durable_records(self.accounts[index])
            held = {key for key in map(content_key, records) if key is not None}
            for device_index in self.by_account[index]:
                held |= self._holdings(device_index)
            self.ledger.final_check(index, held, now)

    def part(self, healed: int) -> FleetPart:
        """What this process measured, for ``fleet_report`` (with the other shards' parts)."""
        metrics = self.metrics
        losses = [LossEvent(min(loss.at, self.config.duration), self.accounts[loss.version.account],
                            loss.version.device, loss.version.record_id.hex(), loss.version.kind,
                            loss.version.created)
                  for loss in self.ledger.losses]
        return FleetPart(metrics.syncs, metrics.samples, losses, metrics.regressions, metrics.user_changes,
                         metrics.reboots, metrics.server_events, self.store_full, dict(self.errors),
                         self.ledger.created, healed, len(self.ledger.at_risk), self.events_processed)


def run_shard(config: FleetConfig, shard: tuple[int, int] = (0, 1), *,
              progress: Callable[[float, dict[str, Any]], None] | None = None) -> FleetPart:
    """Simulate shard ``(k, n)`` of the fleet in this process: the accounts ``a`` with
    ``a % n == k`` and their handsets, against a server of their own that sees the scenario's
    events. Handsets keep their fleet-wide index, so every generator and time is as in one run."""
    fleet = _Fleet(config, progress, shard)
    scheduler_seed = derive_rng(config.seed, "trio").getrandbits(64)

    async def main() -> FleetPart:
        async with trio.open_nursery() as servers:
            fleet.world = RadioWorld(servers)
            await fleet.provision()
            async with trio.open_nursery() as syncs:
                fleet.syncs = syncs
                await fleet.run()
            await fleet.clock.sleep_until(config.duration)
            healed = await fleet.heal()
            fleet.final_losses()
            servers.cancel_scope.cancel()
        return fleet.part(healed)

    # The fleet holds millions of long-lived objects: fewer cyclic-GC passes over them (restored after).
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 1000)
    try:
        with seeded_trio_scheduler(scheduler_seed):
            return trio.run(main, clock=fleet.clock)
    finally:
        gc.set_threshold(*thresholds)


def _shard_task(config: FleetConfig, shard: tuple[int, int], report: Report) -> FleetPart:
    """One shard as an executor's task: its progress goes to ``report`` as ``(now, figures)``."""
    return run_shard(config, shard, progress=lambda now, figures: report((now, figures)))


def run_fleet(config: FleetConfig, *, progress: Callable[[float, dict[str, Any]], None] | None = None,
              jobs: int = 1, executor: Executor | None = None) -> FleetRun:
    """Run one fleet simulation to the end and return its report (deterministic for the seed,
    whatever ``jobs`` and ``executor``). ``jobs`` > 1 splits the accounts into that many shards,
    run by ``executor`` (default: that many local processes; ``emulator.executor``);
    ``ExecutorError`` if a shard fails or its worker dies. ``progress`` gets the slowest shard's
    simulated time and the figures summed over the shards."""
    if not 1 <= jobs <= config.account_count:
        raise ValueError("jobs must be between 1 and the number of accounts")
    latest = [0.0] * jobs
    figures: list[dict[str, Any]] = [{} for _ in range(jobs)]

    def on_report(index: int, payload: Any) -> None:
        latest[index], figures[index] = payload
        if progress is not None:
            progress(min(latest), {name: sum(f.get(name, 0) for f in figures) for name in figures[index]})

    own = executor is None
    runner = open_executor(jobs) if executor is None else executor
    try:
        with contextlib.closing(runner.map(_shard_task, ((config, (k, jobs)) for k in range(jobs)),
                                           on_report=on_report, label=lambda k: f"shard {k + 1} of {jobs}")) as parts_run:
            parts: list[FleetPart] = list(parts_run)
    finally:
        if own:
            runner.close()
    return FleetRun(fleet_report(config, parts), sum(p.events_processed for p in parts),
                    sum(len(p.syncs) for p in parts))

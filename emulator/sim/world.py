"""The deterministic simulation world: accounts of handsets, the reference server, a faulty network.

One ``trio.run`` on ``trio.testing.MockClock(autojump_threshold=0)`` (``sim_clock``); every component draws from
its own RNG derived from the root seed (``emulator.seeding``), so a seed gives the same run, event for event.
A run has two phases. *Faults*: ``steps`` steps of user edits, syncs and nemesis actions (the
swarm says which fault kinds are on). *Heal*: faults off, every handset powered, then rounds of
syncs until a round in which no handset pushed or pulled anything. The oracle
(``emulator.sim.oracle``) checks its invariants after every step, at chosen messages, after
every server fault, and at the end; the first violation stops the run.

``World`` is assembled from parts: ``sim.options`` (what a run is asked, what it returns),
``sim.devices`` (user operations and power cuts), ``sim.nemesis_actions`` (the fault-phase nemesis
and server faults), ``sim.crashes`` (untyped exceptions noticed).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from sidekick_testbed.emulator.flash import FlashError, FlashFaults, PowerLoss
from sidekick_testbed.emulator.handset import Handset, HandsetError, PoweredOff
from sidekick_testbed.emulator.handset.sync_client import SyncError, SyncReport
from sidekick_testbed.emulator.mutants import DEVICE_MUTANTS, NO_MUTANTS, Mutants
from sidekick_testbed.emulator.seeding import derive_rng, derive_seed, seeded_trio_scheduler
from sidekick_testbed.emulator.sim.clock import SimClock
from sidekick_testbed.emulator.sim.crashes import LogCatcher, innermost, where_raised
from sidekick_testbed.emulator.sim.devices import DeviceActions, SimDevice
from sidekick_testbed.emulator.sim.flash_reader import ChipView, FlashReader
from sidekick_testbed.emulator.sim.flash_story import explain
from sidekick_testbed.emulator.sim.ledger import Ledger
from sidekick_testbed.emulator.sim.nemesis import draw_swarm
from sidekick_testbed.emulator.sim.nemesis_actions import NemesisActions
from sidekick_testbed.emulator.sim.network import ConnectionTap, SimNetwork
from sidekick_testbed.emulator.sim.options import (
    GEOMETRY,
    SQLITE_SHARE,
    TIGHT_GEOMETRY,
    RunResult,
    SimOptions,
)
from sidekick_testbed.emulator.sim.oracle import (
    Violation,
    check_device,
    check_failure,
    check_heal,
    check_server_history,
    check_wire,
)
from sidekick_testbed.emulator.sim.simflash import SimFlash
from sidekick_testbed.emulator.sim.sqlite_backend import SimSqlite
from sidekick_testbed.emulator.sim.storage_faults import MARKER, FailingStorage
from sidekick_testbed.emulator.sim.summary import summarize
from sidekick_testbed.emulator.sim.trace_log import Timeline
from sidekick_testbed.emulator.sim.workload import Workload
from sidekick_testbed.emulator.store import StoreError, StoreFull
from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME
from sidekick_testbed.protocol.messages import (
    Bye,
    Commit,
    Durable,
    Error,
    Hello,
    HelloOk,
    Message,
    Pull,
    PullAck,
    Records,
)
from sidekick_testbed.protocol.records import Record
from sidekick_testbed.server_stub.faults import FAULT_MODES, FaultSet
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimSnapshot, SimulatedStorage
from sidekick_testbed.server_stub.storage import UnknownAccount

if TYPE_CHECKING:
    import trio.testing

__all__ = ["World", "run_world"]

_T = TypeVar("_T")

_FLASH_WHATS = frozenset({"discarded", "blob-discarded", "store-unreadable", "device-store", "mount-failed",
                          "diverged", "blob-missing"})
"""Violations whose story names the flash operations behind them."""
WATCHDOG = 1800.0
"""Simulated seconds one sync attempt may take before it counts as a hang."""
SETTLE = 200.0
"""Simulated seconds the heal phase waits for stalled bytes and pending reboots."""
STEP_MEAN = 3.0
"""Mean simulated seconds between two steps of the fault phase."""
_USER_WEIGHT = 10.0
_SYNC_WEIGHT = 7.0
_BACKUP_WEIGHT = 1.0


class World(NemesisActions, DeviceActions):
    """One simulated run (see the module docstring). ``run()`` once per object."""

    def __init__(self, seed: int, options: SimOptions = SimOptions(),
                 script: Sequence[tuple[str, int]] | None = None, *, tap: ConnectionTap | None = None) -> None:
        self.seed = seed
        self.options = options
        given = script if script is not None else options.script
        self.script = [(step[0], step[1], step[2] if len(step) > 2 else n)  # type: ignore[misc]
                       for n, step in enumerate(given)] if given is not None else None
        """Explicit fault-phase steps ``(action, device index[, step number])`` instead of the seed's
        draw: ``user``, ``sync``, ``wait``, ``backup``, or a nemesis step kind (``STEP_KINDS``)."""
        self.steps: list[tuple[str, int, int]] = []
        self.tap = tap
        """Sees every network connection (a packet capture of the run); changes nothing in it."""
        self.swarm = options.swarm if options.swarm is not None else draw_swarm(self._rng("swarm"), options.faults)
        self.timeline = Timeline()
        self.ledger = Ledger()
        self.violation: Violation | None = None
        self.devices: list[SimDevice] = []
        self._by_name: dict[str, SimDevice] = {}
        self._by_id: dict[bytes, str] = {}
        mutant = options.mutant
        self.device_mutants = Mutants(frozenset({mutant})) if mutant in DEVICE_MUTANTS else NO_MUTANTS
        server_faults = FaultSet([mutant]) if mutant in FAULT_MODES else FaultSet()
        backend = options.backend
        if backend == "mixed":
            backend = "sqlite" if self._rng("backend").random() < SQLITE_SHARE else "sim"
        self.backend = backend
        inner: Any = SimSqlite(self._rng("storage"), server_faults) if backend == "sqlite" \
            else SimulatedStorage(self._rng("storage"), faults=server_faults)
        self.store_faults = FailingStorage(inner)
        self.storage: Any = self.store_faults
        """The server's storage: the backend, failing on command (``storage-failure``)."""
        frame_kib = self.swarm.kinds.get("small-frames", 0.0)
        self.max_frame = int(frame_kib * 1024) if frame_kib else DEFAULT_MAX_FRAME
        """Both ends offer this frame size (``small-frames``: 1-4 KiB, so that photos span chunks,
        pulls span RECORDS frames and pushes come in batches of the 30 to 126 changes one DURABLE
        of the frame lists)."""
        self.limits = Limits(pull_records=4, max_frame=self.max_frame,
                             max_batch=min(256, (self.max_frame - 36) // 32))
        self.backups: list[SimSnapshot] = []
        self.geometry = TIGHT_GEOMETRY if self._rng("geometry").random() < 0.5 else GEOMETRY
        self.rng = self._rng("nemesis")
        self.workload = Workload(self._rng("workload"), max_frame=self.max_frame,
                                 fill_notes=self.swarm.kinds.get("full-frames", 0.0))
        self.server: SyncServer | None = None
        self._server_scope: trio.CancelScope | None = None
        self._server_epoch = 0
        self._healing = False
        self.sessions = 0
        self.nemesis_count = 0
        self.generations = 1
        self.clock: SimClock | None = None
        self._catcher = LogCatcher()
        self.sim_time = 0.0
        self.reader = FlashReader()
        self._busy_user = self.swarm.kinds.get("edit-during-sync", 0.0)
        self._busy_rng = self._rng("edit-during-sync")
        """The oracle's reader of the handsets' chips (never through their stores)."""

    def _rng(self, name: str) -> random.Random:
        return derive_rng(self.seed, name)

    # ------------------------------------------------------------------ running

    def run(self) -> RunResult:
        """Run the world to the end (or the first violation) and return the result."""
        self.clock = SimClock()
        loggers = [logging.getLogger("sidekick")]
        saved = [(lg.propagate, lg.level) for lg in loggers]
        for lg in loggers:
            lg.addHandler(self._catcher)
            lg.propagate = False
        try:
            with seeded_trio_scheduler(derive_seed(self.seed, "trio-scheduler")):
                trio.run(self._main, clock=self.clock)
        except Exception as exc:  # an exception no part handled: invariant 4, with the trace so far
            leaf = innermost(exc)
            where = where_raised(leaf)
            violation = Violation("crash", "untyped-exception",
                                  f"{type(leaf).__name__}: {leaf} (raised in {where})",
                                  {"exception": type(leaf).__name__, "where": where})
            self.violation = self.violation or violation
            t = self.timeline.events[-1]["t"] if self.timeline.events else 0.0
            self.timeline.events.append({"t": t, "kind": "violation", **violation.as_dict()})
            self.sim_time = t
        finally:
            for lg, (propagate, _level) in zip(loggers, saved, strict=True):
                lg.removeHandler(self._catcher)
                lg.propagate = propagate
            if isinstance(self.store_faults.inner, SimSqlite):
                self.store_faults.inner.close()
        stats = {
            "sim_time": round(self.sim_time, 3),
            "sessions": self.sessions,
            "versions": len(self.ledger.by_vid),
            "faults": self.nemesis_count + sum(getattr(getattr(self, "network", None), "injected", {}).values()),
            "generations": self.generations,
            "events": len(self.timeline.events) + self.timeline.dropped,
        }
        return RunResult(self.seed, self.options, self.swarm, self.timeline.events, self.violation, stats,
                         self.backend, list(self.steps))

    async def _main(self) -> None:
        async with trio.open_nursery() as root:
            self._root = root
            self.network = SimNetwork(self._rng("network"), self.swarm.network(), self.timeline, root,
                                      partitions=self.swarm.on("partition"), clock=self.clock, tap=self.tap)
            self.timeline.record("start", seed=self.seed, backend=self.backend, swarm=self.swarm.as_dict(),
                                 mutant=self.options.mutant)
            await self._setup()
            with trio.CancelScope() as self._stop:
                async with trio.open_nursery() as work:
                    self._work = work
                    await self._fault_phase()
                    if self.violation is None:
                        await self._heal_phase()
                    work.cancel_scope.cancel()
            self.sim_time = trio.current_time()
            self.timeline.record("end", outcome="violation" if self.violation else "clean")
            root.cancel_scope.cancel()

    def _fail(self, violation: Violation) -> None:
        if self.violation is not None:
            return
        violation = self._with_flash_story(violation)
        self.violation = violation
        self.timeline.record("violation", **violation.as_dict())
        self._stop.cancel()

    # ------------------------------------------------------------------ setup

    async def _setup(self) -> None:
        opts = self.options
        bindings = ("raw", "http")
        for a in range(opts.accounts):
            account = f"acct{a}"
            key = self._rng(f"key/{account}").randbytes(32)
            await self.storage.add_account(account, key)
            for d in range(opts.devices):
                name = f"{account}.d{d}"
                flash = SimFlash(self.geometry, rng=self._rng(f"flash/{name}"), faults=self.swarm.flash())
                device_id = self._rng(f"id/{name}").randbytes(16)
                handset = Handset.create(flash, device_id=device_id, account=account, key=key,
                                         rng=self._rng(f"handset/{name}"), mutants=self.device_mutants,
                                         name=name, observer=self)
                flash.set_cut_rate(self.swarm.kinds.get("power-cut", 0.0) * 0.02, self._rng(f"battery/{name}"))
                handset.max_frame = self.max_frame
                binding = opts.binding if opts.binding != "mixed" else bindings[(a + d) % 2]
                device = SimDevice(name, account, flash, handset, binding, self.network.connector(name, binding))
                self.devices.append(device)
                self._by_name[name] = device
                self._by_id[device_id] = name
                self.ledger.add_device(name, account)
                self.timeline.record("device", dev=name, binding=binding, id=device_id.hex()[:8])
        self.backups.append(self.storage.backup())
        await self._start_server()

    # ------------------------------------------------------------------ server

    async def _start_server(self) -> None:
        self._server_epoch += 1
        server = SyncServer(self.storage, limits=self.limits, rng=self._rng(f"server/{self._server_epoch}"))
        self.server = server
        scope = trio.CancelScope()
        self._server_scope = scope
        nursery: trio.Nursery = await self._root.start(self._server_tasks, scope)

        def spawn(binding: str, stream: trio.abc.Stream) -> None:
            nursery.start_soon(self._serve, server, binding, stream)

        self.network.set_server(spawn)

    async def _server_tasks(self, scope: trio.CancelScope,
                            task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await trio.sleep_forever()

    async def _serve(self, server: SyncServer, binding: str, stream: trio.abc.Stream) -> None:
        try:
            if binding == "raw":
                await server.serve_stream(stream)
            else:
                await server.serve_http_stream(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # the server must handle everything a device or network does
            self._fail(Violation("crash", "server-exception",
                                 f"the server raised {type(exc).__name__}: {exc}", {"binding": binding}))
        finally:
            close = getattr(stream, "close", None)  # the network's own ends close at once
            if close is not None:
                close()
            else:
                await trio.aclose_forcefully(stream)
        self._check_logs()

    def _check_logs(self) -> None:
        """A logged server error is a crash, except one per storage failure injected (a correct
        server logs the failure it could not hide)."""
        if not self._catcher.errors or self.violation is not None:
            return
        expected = self.store_faults.fired
        for text in self._catcher.errors:
            if MARKER in text and expected > 0:
                expected -= 1
                continue
            self._fail(Violation("crash", "server-error", f"the server logged an error: {text}", {"log": text}))
            return

    async def _stop_server(self, why: str) -> None:
        self.network.set_server(None)
        if self._server_scope is not None:
            self._server_scope.cancel()
            self._server_scope = None
        self.server = None
        await self.network.reset_all()
        self.timeline.record("server.down", why=why)

    async def _restart_later(self, delay: float, epoch: int) -> None:
        await trio.sleep(delay)
        if self._server_epoch == epoch and self.server is None:
            await self._start_server()
            self.timeline.record("server.up", generation=f"{self.storage.generation:#x}")

    # ------------------------------------------------------------------ observer (SyncObserver)

    def on_message(self, handset: Handset, direction: str, message: Message) -> None:
        """Ledger, timeline and wire checks for one message of one handset."""
        name = handset.name
        self.timeline.record("msg", dev=name, dir=direction, **summarize(message, self.ledger.label))
        device = self._by_name[name]
        chip = self._chip(device) if direction == "sent" and isinstance(message, PullAck) else None
        if isinstance(message, Hello):
            device.device_id = message.device_id
        elif isinstance(message, Error) and direction == "received":
            device.last_error = message.code
        failed = self.store_faults.failed_lsns.get((device.account, device.device_id)) \
            if isinstance(message, Durable) else None
        violation = check_wire(self.ledger, name, direction, message, chip, failed)
        if violation is not None:
            self._fail(violation)
            return
        self.ledger.message(name, direction, message)
        if isinstance(message, Durable) and direction == "received":
            for entry in message.assigned:
                self.ledger.assigned[(device.device_id, entry.lsn, message.generation)] = entry.version
        if isinstance(message, Records):
            device.pulled.extend(message.records)
        elif isinstance(message, Pull | HelloOk):
            device.pulled.clear()
        if direction == "sent" and isinstance(message, Commit | PullAck | Bye):
            self._check_device(device)
        if direction == "sent" and self._busy_user and self._busy_rng.random() < self._busy_user:
            self._work.start_soon(self._edit_during_sync, device)  # runs while the sync waits for the answer

    async def _edit_during_sync(self, device: SimDevice) -> None:
        if self.violation is None and not self._healing:
            self._user(device)
            self._check_device(device)

    def on_regression(self, handset: Handset, reason: str) -> None:
        """A handset detected a server regression."""
        self.timeline.record("regression", dev=handset.name, reason=reason)

    # ------------------------------------------------------------------ checks

    def _chip(self, device: SimDevice) -> ChipView:
        """What the device's flash holds, read by the oracle's own reader (the chip is not touched)."""
        return self.reader.read(device.flash)

    def _check_device(self, device: SimDevice) -> None:
        if self.violation is not None:
            return
        chip = self._chip(device)
        generation = self.storage.generation
        if device.last_good is chip and device.checked_at == (generation, self.ledger.changes):
            return  # the same chip, ledger and generation passed this very check
        violation = check_device(self.ledger, device.name, chip, generation)
        if violation is not None:
            self._fail(violation)
        else:
            device.last_good = chip
            device.checked_at = (generation, self.ledger.changes)

    def _with_flash_story(self, violation: Violation) -> Violation:
        """A violation about a device's store, with the flash operations behind it (``flash_story``)."""
        if violation.what not in _FLASH_WHATS:
            return violation
        device = self._by_name.get(str(violation.details.get("device")))
        if device is None:
            return violation
        record = violation.details.get("record")
        blob = violation.details.get("blob")
        named = tuple(int(n) for n in re.findall(r"\bpage (\d+)\b", violation.text))  # the store's own words
        lines = explain(device.flash, self._chip(device), device.last_good,
                        bytes.fromhex(record) if isinstance(record, str) else None,
                        bytes.fromhex(blob) if isinstance(blob, str) else None, named)
        if not lines:
            return violation
        return replace(violation, details={**violation.details, "flash": lines})

    @staticmethod
    def _unreadable(device: SimDevice, exc: Exception) -> Violation:
        return Violation("crash", "store-unreadable",
                         f"{device.name}'s store cannot be read: {type(exc).__name__}: {exc}",
                         {"device": device.name})

    def _check_devices(self) -> None:
        for device in self.devices:
            self._check_device(device)

    async def _check_server(self) -> None:
        if self.violation is not None:
            return
        generation = self.storage.generation
        for a in range(self.options.accounts):
            account = f"acct{a}"
            try:
                history = await self.storage.history(account)
            except UnknownAccount:
                history = []
            violation = check_server_history(self.ledger, account, generation, history, self._by_id)
            if violation is not None:
                self._fail(violation)
                return

    # ------------------------------------------------------------------ phases

    async def _fault_phase(self) -> None:
        weights = {"user": _USER_WEIGHT, "sync": _SYNC_WEIGHT}
        if self.swarm.on("server-restore"):
            weights["backup"] = _BACKUP_WEIGHT
        weights.update(self.swarm.step_weights())
        names = list(weights)
        values = [weights[n] for n in names]
        count = self.options.steps if self.script is None else len(self.script)
        for step in range(count):
            number = step if self.script is None else self.script[step][2]
            rng = self._rng(f"step/{number}")
            pause = rng.expovariate(1.0 / STEP_MEAN)
            action = rng.choices(names, values)[0]
            index = rng.randrange(len(self.devices))
            if self.script is not None:
                action, index = self.script[step][0], self.script[step][1] % len(self.devices)
            self.steps.append((action, index, number))  # before its pause: what happens meanwhile replays
            await trio.sleep(pause)
            device = self.devices[index]
            self.rng = rng  # the step's own choices (nemesis parameters) come from its number
            if action == "wait":
                await trio.sleep(30.0)
            elif action == "user":
                self._user(device)
            elif action == "sync":
                if device.handset.powered and not device.syncing:
                    self._work.start_soon(self._sync, device)
            else:
                await self._nemesis(action, device)
            self._check_devices()
            if action.startswith("server") or step % 8 == 7:
                await self._check_server()
            if self.violation is not None:
                return

    async def _heal_phase(self) -> None:
        self._healing = True
        self.timeline.record("heal")
        self.network.heal()
        self.store_faults.disarm()
        for device in self.devices:
            device.flash.cancel_cut()
            device.flash.faults = FlashFaults()
        if self.server is None:
            self._server_epoch += 1
            await self._start_server()
            self.timeline.record("server.up", generation=f"{self.storage.generation:#x}")
        await trio.sleep(SETTLE)
        for _ in range(100):
            if not any(d.syncing or d.rebooting for d in self.devices):
                break
            await trio.sleep(10.0)
        for device in self.devices:
            if not device.handset.powered and not device.rebooting:
                self._reboot(device)
        rounds = 6 + 2 * len(self.devices)
        for number in range(rounds):
            quiet = True
            before = await self._server_versions()
            for device in self.devices:
                if device.full:
                    self._free_space(device, await self._account_heads(device.account))
                report = await self._sync(device)
                if report is None and device.full and device.beyond:
                    continue  # the account does not fit this chip, even with every photo deleted
                if report is None or report.pushed or report.pulled or report.regression:
                    quiet = False
                if self.violation is not None:
                    return
            if await self._server_versions() != before:
                quiet = False  # a full handset's sync failed after its push: the others must pull it
            self._check_devices()
            await self._check_server()
            if self.violation is not None:
                return
            if quiet:
                self.timeline.record("quiet", round=number + 1)
                break
        else:
            stuck = [d.name for d in self.devices if d.full and not d.beyond]
            if stuck:
                self._fail(Violation("convergence", "full-after-freeing",
                                     f"{stuck[0]} is still refused as full after its user freed space (the oracle's "
                                     f"accounting found room for what it must take): no sync went through in "
                                     f"{rounds} rounds",
                                     {"device": stuck[0], "rounds": rounds}))
                return
            self._fail(Violation("convergence", "not-quiet",
                                 f"after heal, syncs did not go quiet within {rounds} rounds", {"rounds": rounds}))
            return
        await self._check_final()

    async def _server_versions(self) -> list[int]:
        """Every account's server version (0 for an account the server does not hold)."""
        versions = []
        for a in range(self.options.accounts):
            try:
                versions.append(await self.storage.server_version(f"acct{a}"))
            except UnknownAccount:
                versions.append(0)
        return versions

    async def _account_heads(self, account: str) -> list[Record]:
        """The server's heads of ``account`` (none for an account it does not hold)."""
        try:
            heads: list[Record] = await self.storage.records(account)
        except UnknownAccount:
            heads = []
        return heads

    async def _check_final(self) -> None:
        final = self.storage.generation
        released_before = {key for key, gens in self.ledger.released.items() if final not in gens}
        # a handset the account does not fit cannot push: what it still holds is kept, not lost
        released_before |= {key for d in self.devices if d.full and d.beyond
                            for key in self.ledger.devices[d.name].own.values()}
        for a in range(self.options.accounts):
            account = f"acct{a}"
            heads = await self._account_heads(account)
            device_heads: dict[str, list[Record]] = {}
            device_blobs: dict[str, set[bytes]] = {}
            for d in self.devices:
                if d.account != account or (d.full and d.beyond):
                    continue
                chip = self._chip(d)
                device_heads[d.name] = [head.record for head in chip.heads.values()]
                device_blobs[d.name] = set(chip.blobs)
            violation = check_heal(self.ledger, account, heads, device_heads, released_before, device_blobs)
            if violation is not None:
                self._fail(violation)
                return

    # ------------------------------------------------------------------ sync

    async def _sync(self, device: SimDevice) -> SyncReport | None:
        if device.syncing or not device.handset.powered:
            return None
        device.syncing = True
        device.last_error = None
        self.sessions += 1
        self.timeline.record("sync", dev=device.name)
        report: SyncReport | None = None
        outcome = "ok"
        try:
            with trio.move_on_after(WATCHDOG) as watchdog:
                report = await device.handset.sync_once(device.connect)
            if watchdog.cancelled_caught:
                self._fail(Violation("crash", "hang", f"{device.name}: one sync attempt ran past the "
                                     f"{WATCHDOG:g} s watchdog", {"device": device.name}))
                return None
        except SyncError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
            misread = check_failure(device.name, exc, device.last_error)
            if misread is not None:
                self._fail(misread)
        except PowerLoss:
            outcome = "power lost"
            self._power_lost(device)
        except (PoweredOff, HandsetError):
            outcome = "powered off"
            self._power_lost(device)
        except StoreFull as exc:
            outcome = f"store full: {exc}"
            self._sync_refused(device)
        except (StoreError, FlashError) as exc:
            self._fail(Violation("crash", "device-store", f"{device.name}: sync failed on its store: "
                                 f"{type(exc).__name__}: {exc}", {"device": device.name}))
        except Exception as exc:
            self._fail(Violation("crash", "device-exception", f"{device.name}: sync raised "
                                 f"{type(exc).__name__}: {exc}", {"device": device.name}))
        finally:
            device.syncing = False
        if report is not None:
            device.full = device.beyond = device.freed = False
            self.timeline.record("sync.ok", dev=device.name, pushed=report.pushed, pulled=report.pulled,
                                 durable=report.durable, conflicts=len(report.conflicts),
                                 regression=report.regression)
        else:
            self.timeline.record("sync.fail", dev=device.name, why=outcome[:160])
        return report


def run_world(seed: int, options: SimOptions = SimOptions()) -> RunResult:
    """Run one seed and return its result."""
    return World(seed, options).run()

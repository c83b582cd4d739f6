"""The deterministic simulation world: accounts of handsets, the reference server, a faulty network.

One ``trio.run`` on ``trio.testing.MockClock(autojump_threshold=0)`` (``sim_clock``); every component draws from
its own RNG derived from the root seed (``emulator.seeding``), so a seed gives the same run, event for event.
A run has two phases. *Faults*: ``steps`` steps of user edits, syncs and nemesis actions (the
swarm says which fault kinds are on). *Heal*: faults off, every handset powered, then rounds of
syncs until a round in which no handset pushed or pulled anything. The oracle
(``emulator.sim.oracle``) checks its invariants after every step, at chosen messages, after
every server fault, and at the end; the first violation stops the run.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from sidekick_testbed.emulator.flash import FlashError, FlashFaults, Geometry, PowerLoss
from sidekick_testbed.emulator.handset import Handset, HandsetError, PoweredOff
from sidekick_testbed.emulator.handset.sync_client import SyncError, SyncReport
from sidekick_testbed.emulator.mutants import DEVICE_MUTANTS, NO_MUTANTS, Mutants
from sidekick_testbed.emulator.seeding import derive_rng, derive_seed, seeded_trio_scheduler
from sidekick_testbed.emulator.sim.capacity import has_room, head_bytes, record_bytes, usable_bytes
from sidekick_testbed.emulator.sim.clock import SimClock
from sidekick_testbed.emulator.sim.flash_reader import ChipView, FlashReader
from sidekick_testbed.emulator.sim.flash_story import explain
from sidekick_testbed.emulator.sim.ledger import Key, Ledger, key_of
from sidekick_testbed.emulator.sim.nemesis import FAULT_KINDS, Swarm, draw_swarm
from sidekick_testbed.emulator.sim.network import ConnectionTap, SimNetwork
from sidekick_testbed.emulator.sim.oracle import (
    Violation,
    check_device,
    check_heal,
    check_server_history,
    check_wire,
)
from sidekick_testbed.emulator.sim.simflash import SimFlash
from sidekick_testbed.emulator.sim.sqlite_backend import SimSqlite
from sidekick_testbed.emulator.sim.storage_faults import FAILURE_KINDS, MARKER, FailingStorage
from sidekick_testbed.emulator.sim.summary import summarize
from sidekick_testbed.emulator.sim.trace_log import Timeline
from sidekick_testbed.emulator.sim.workload import Workload
from sidekick_testbed.emulator.store import StoreError, StoreFull
from sidekick_testbed.protocol.framing import DEFAULT_MAX_FRAME
from sidekick_testbed.protocol.messages import (
    Bye,
    Commit,
    Durable,
    Hello,
    HelloOk,
    Message,
    Pull,
    PullAck,
    Records,
)
from sidekick_testbed.protocol.records import Photo, Record
from sidekick_testbed.server_stub.faults import FAULT_MODES, FaultSet
from sidekick_testbed.server_stub.limits import Limits
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimSnapshot, SimulatedStorage
from sidekick_testbed.server_stub.storage import UnknownAccount

if TYPE_CHECKING:
    import trio.testing

__all__ = ["ALL_MUTANTS", "GEOMETRY", "RunResult", "SimOptions", "World", "cut_op_match", "run_world",
           "with_swarm"]

_T = TypeVar("_T")

ALL_MUTANTS: dict[str, str] = {**DEVICE_MUTANTS, **FAULT_MODES}
"""Every planted bug ``--mutant`` accepts: device mutants, then server fault modes."""

GEOMETRY = Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=8)
"""A small chip, so garbage collection runs often within one simulated run."""
TIGHT_GEOMETRY = Geometry(page_size=512, spare_size=16, pages_per_block=4, blocks=6)
"""A chip so small that live data fills most blocks: collection moves live entries (some seeds)."""

SQLITE_SHARE = 0.25
"""The share of seeds that run the server on SQLite under ``backend="mixed"``."""
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


@dataclass(frozen=True)
class SimOptions:
    """What one run simulates (everything else comes from the seed)."""

    accounts: int = 2
    devices: int = 2
    steps: int = 40
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    mutant: str | None = None
    binding: str = "mixed"
    swarm: Swarm | None = None
    backend: str = "mixed"
    """The server's storage: ``sim`` (simulated), ``sqlite`` (a real database file), or ``mixed``:
    SQLite for a share of the seeds (``SQLITE_SHARE``), drawn from the seed."""
    script: tuple[tuple[str, int, int], ...] | None = None
    """Explicit fault-phase steps ``(action, device index, step number)`` instead of the seed's draw
    (what the shrinker cuts down); each step's random choices come from its own number, so removing
    a step leaves the others as they were."""

    def __post_init__(self) -> None:
        if not 1 <= self.accounts <= 16:
            raise ValueError(f"accounts must be in 1..16, not {self.accounts}")
        if not 1 <= self.devices <= 16:
            raise ValueError(f"devices must be in 1..16 per account, not {self.devices}")
        if not 0 <= self.steps <= 100_000:
            raise ValueError(f"steps must be in 0..100000, not {self.steps}")
        unknown = sorted(set(self.faults) - FAULT_KINDS.keys())
        if unknown:
            raise ValueError(f"unknown fault kind(s): {', '.join(unknown)}")
        if self.mutant is not None and self.mutant not in ALL_MUTANTS:
            raise ValueError(f"unknown mutant {self.mutant!r} (sidekick fuzz --list-mutants)")
        if self.binding not in ("raw", "http", "mixed"):
            raise ValueError(f"binding must be raw, http or mixed, not {self.binding!r}")
        if self.backend not in ("sim", "sqlite", "mixed"):
            raise ValueError(f"backend must be sim, sqlite or mixed, not {self.backend!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (traces)."""
        return {
            "accounts": self.accounts, "devices": self.devices, "steps": self.steps,
            "faults": sorted(self.faults), "mutant": self.mutant, "binding": self.binding,
            "backend": self.backend, "swarm": self.swarm.as_dict() if self.swarm is not None else None,
            "script": [list(step) for step in self.script] if self.script is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimOptions:
        """Inverse of ``as_dict`` (ValueError/TypeError/KeyError on a bad value)."""
        swarm = data.get("swarm")
        script = data.get("script")
        return cls(
            accounts=int(data["accounts"]), devices=int(data["devices"]), steps=int(data["steps"]),
            faults=frozenset(str(f) for f in data["faults"]), mutant=data.get("mutant"),
            binding=str(data.get("binding", "mixed")), backend=str(data.get("backend", "sim")),
            swarm=Swarm.from_dict(swarm) if swarm is not None else None,
            script=tuple((str(a), int(d), int(k)) for a, d, k in script) if script is not None else None,
        )


@dataclass
class RunResult:
    """The outcome of one run: its timeline, the first violation (None: clean) and counters."""

    seed: int
    options: SimOptions
    swarm: Swarm
    events: list[dict[str, Any]]
    violation: Violation | None
    stats: dict[str, Any]
    backend: str = "sim"
    """The server's storage in this run (``sim`` or ``sqlite``)."""
    steps: list[tuple[str, int, int]] = field(default_factory=list)
    """The fault-phase steps that ran: (action, device index, step number), a script that replays them."""


@dataclass(eq=False)
class _Device:
    """One handset in the world and what the world knows of it."""

    name: str
    account: str
    flash: SimFlash
    handset: Handset
    binding: str
    connect: Any
    syncing: bool = False
    full: bool = False
    """The store refused a write as full and the oracle's own accounting agrees (``_store_full``)."""
    device_id: bytes = b""
    """The id the device named in its last HELLO."""
    last_good: ChipView | None = None
    """The chip as the last check that passed read it (what a later loss is compared with)."""
    writing: Record | None = None
    """What the user is writing (its size counts if the store refuses it as full)."""
    pulled: list[Record] = field(default_factory=list)
    """The records of the pull under way, as the device received them."""
    rebooting: bool = False
    pending: tuple[Callable[[Any], bool], Key | None, bytes | None, str] | None = None


def cut_op_match(key: Key | None, record_id: bytes | None, old: frozenset[bytes], *,
                 photo_caption: str | None = None) -> Callable[[Record], bool]:
    """How a user operation that a power cut interrupted is recognised on flash after the reboot:
    by its content (``key``; for a photo, its caption), and only in a record it could have written:
    ``record_id`` for an edit or a delete (deleting a conflict copy writes the same tombstone as
    deleting its original), a record not in ``old`` (the ids before the operation) for an add."""
    def match(record: Record) -> bool:
        if record_id is not None:
            if record.record_id != record_id:
                return False
        elif record.record_id in old:
            return False
        if photo_caption is not None:
            return isinstance(record.body, Photo) and record.body.caption == photo_caption and not record.deleted
        return key_of(record) == key

    return match


class _LogCatcher(logging.Handler):
    """Collects error records of the server (a logged exception is an untyped exception)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and record.name.startswith("sidekick"):
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text += f": {type(exc).__name__}: {exc}"
            self.errors.append(text)



class World:
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
        self.devices: list[_Device] = []
        self._by_name: dict[str, _Device] = {}
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
        pulls span RECORDS frames and a DURABLE lists fewer changes than a commit made)."""
        self.limits = Limits(pull_records=4, max_frame=self.max_frame,
                             max_batch=min(256, (self.max_frame - 36) // 32))
        self.backups: list[SimSnapshot] = []
        self.geometry = TIGHT_GEOMETRY if self._rng("geometry").random() < 0.5 else GEOMETRY
        self.rng = self._rng("nemesis")
        self.workload = Workload(self._rng("workload"))
        self.server: SyncServer | None = None
        self._server_scope: trio.CancelScope | None = None
        self._server_epoch = 0
        self._healing = False
        self.sessions = 0
        self.nemesis_count = 0
        self.generations = 1
        self.clock: SimClock | None = None
        self._catcher = _LogCatcher()
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
        loggers = [logging.getLogger("sidekick"), logging.getLogger("emulator")]
        saved = [(lg.propagate, lg.level) for lg in loggers]
        for lg in loggers:
            lg.addHandler(self._catcher)
            lg.propagate = False
        try:
            with seeded_trio_scheduler(derive_seed(self.seed, "trio-scheduler")):
                trio.run(self._main, clock=self.clock)
        except Exception as exc:  # an exception no part handled: invariant 4, with the trace so far
            leaf = _innermost(exc)
            where = _where(leaf)
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
                device = _Device(name, account, flash, handset, binding, self.network.connector(name, binding))
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
        failed = self.store_faults.failed_lsns.get((device.account, device.device_id)) \
            if isinstance(message, Durable) else None
        violation = check_wire(self.ledger, name, direction, message, chip, failed)
        if violation is not None:
            self._fail(violation)
            return
        self.ledger.message(name, direction, message)
        if isinstance(message, Records):
            device.pulled.extend(message.records)
        elif isinstance(message, Pull | HelloOk):
            device.pulled.clear()
        if direction == "sent" and isinstance(message, Commit | PullAck | Bye):
            self._check_device(device)
        if direction == "sent" and self._busy_user and self._busy_rng.random() < self._busy_user:
            self._work.start_soon(self._edit_during_sync, device)  # runs while the sync waits for the answer

    async def _edit_during_sync(self, device: _Device) -> None:
        if self.violation is None and not self._healing:
            self._user(device)
            self._check_device(device)

    def on_regression(self, handset: Handset, reason: str) -> None:
        """A handset detected a server regression."""
        self.timeline.record("regression", dev=handset.name, reason=reason)

    # ------------------------------------------------------------------ checks

    def _chip(self, device: _Device) -> ChipView:
        """What the device's flash holds, read by the oracle's own reader (the chip is not touched)."""
        return self.reader.read(device.flash)

    def _check_device(self, device: _Device) -> None:
        if self.violation is not None:
            return
        chip = self._chip(device)
        violation = check_device(self.ledger, device.name, chip, self.storage.generation)
        if violation is not None:
            self._fail(violation)
        else:
            device.last_good = chip

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
    def _unreadable(device: _Device, exc: Exception) -> Violation:
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
                report = await self._sync(device)
                if report is None and device.full:
                    continue  # a full store cannot take more: not a durability question
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

    async def _check_final(self) -> None:
        final = self.storage.generation
        released_before = {key for key, gens in self.ledger.released.items() if final not in gens}
        # a full handset cannot push: what it still holds is kept, not lost
        released_before |= {key for d in self.devices if d.full for key in self.ledger.devices[d.name].own.values()}
        for a in range(self.options.accounts):
            account = f"acct{a}"
            try:
                heads = await self.storage.records(account)
            except UnknownAccount:
                heads = []
            device_heads: dict[str, list[Record]] = {}
            device_blobs: dict[str, set[bytes]] = {}
            for d in self.devices:
                if d.account != account or d.full:
                    continue
                chip = self._chip(d)
                device_heads[d.name] = [head.record for head in chip.heads.values()]
                device_blobs[d.name] = set(chip.blobs)
            violation = check_heal(self.ledger, account, heads, device_heads, released_before, device_blobs)
            if violation is not None:
                self._fail(violation)
                return

    # ------------------------------------------------------------------ sync

    async def _sync(self, device: _Device) -> SyncReport | None:
        if device.syncing or not device.handset.powered:
            return None
        device.syncing = True
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
        except PowerLoss:
            outcome = "power lost"
            self._power_lost(device)
        except (PoweredOff, HandsetError):
            outcome = "powered off"
            self._power_lost(device)
        except StoreFull as exc:
            outcome = f"store full: {exc}"
            chip = self._chip(device)
            rewrite = sum(head_bytes(head.record, self.geometry) for head in chip.heads.values())
            pulled = sum(record_bytes(record, self.geometry) for record in device.pulled)
            self._store_full(device, "a sync", max(pulled, rewrite))
        except (StoreError, FlashError) as exc:
            self._fail(Violation("crash", "device-store", f"{device.name}: sync failed on its store: "
                                 f"{type(exc).__name__}: {exc}", {"device": device.name}))
        except Exception as exc:
            self._fail(Violation("crash", "device-exception", f"{device.name}: sync raised "
                                 f"{type(exc).__name__}: {exc}", {"device": device.name}))
        finally:
            device.syncing = False
        if report is not None:
            device.full = False
            self.timeline.record("sync.ok", dev=device.name, pushed=report.pushed, pulled=report.pulled,
                                 durable=report.durable, conflicts=len(report.conflicts),
                                 regression=report.regression)
        else:
            self.timeline.record("sync.fail", dev=device.name, why=outcome[:160])
        return report

    # ------------------------------------------------------------------ users

    def _user(self, device: _Device) -> None:
        handset = device.handset
        if not handset.powered:
            return
        try:
            heads = handset.store.records()
            live = [(v.record.record_id, v.record.body) for v in heads if not v.record.deleted]
            old = frozenset(v.record.record_id for v in heads)
            op = self.workload.next_op(live)
            blank_id = bytes(16)
            if op.kind == "photo":
                device.writing = Record(blank_id, 0, False,
                                        Photo(op.caption, blank_id, len(op.photo), bytes(32), "image/jpeg"))
                device.pending = (cut_op_match(None, None, old, photo_caption=op.caption), None, None, "photo")
                record_id = handset.take_photo(op.caption, op.photo)
                head = handset.store.get(record_id)
                assert head is not None
                self._created(device, "photo", record_id, key_of(head.record), None)
                return
            if op.kind == "import":
                for body in op.bodies:
                    device.writing = Record(blank_id, 0, False, body)
                    new: Key = (False, body)
                    device.pending = (cut_op_match(new, None, old), None, None, "add")
                    record_id = handset.add(body)
                    self._created(device, "add", record_id, new, None)
                return
            if op.kind == "add":
                assert op.body is not None
                device.writing = Record(blank_id, 0, False, op.body)
                key: Key = (False, op.body)
                device.pending = (cut_op_match(key, None, old), None, None, "add")
                record_id = handset.add(op.body)
                self._created(device, "add", record_id, key, None)
                return
            assert op.record_id is not None
            head = handset.store.get(op.record_id)
            assert head is not None
            parent = key_of(head.record)
            key = (True, head.record.body) if op.kind == "delete" else (False, op.body)  # type: ignore[assignment]
            device.pending = (cut_op_match(key, op.record_id, old), parent, op.record_id, op.kind)
            device.writing = Record(op.record_id, 0, key[0], key[1])
            if op.kind == "delete":
                handset.delete(op.record_id)
            else:
                assert op.body is not None
                handset.edit(op.record_id, op.body)
            self._created(device, op.kind, op.record_id, key, parent)
        except PowerLoss:
            self.timeline.record("user.cut", dev=device.name)
            self._power_lost(device)
            self._resolve_pending(device)  # the flash is final now: a mount only reads it
        except StoreFull:
            device.pending = None
            self.timeline.record("user.full", dev=device.name)
            writing = device.writing
            self._store_full(device, "a user's write",
                             record_bytes(writing, self.geometry) if writing is not None else 0)
        except (StoreError, FlashError, HandsetError) as exc:
            device.pending = None
            self._fail(Violation("crash", "device-store", f"{device.name}: a user operation failed: "
                                 f"{type(exc).__name__}: {exc}", {"device": device.name}))

    def _store_full(self, device: _Device, what: str, extra: int) -> None:
        """The store refused ``what`` as full: believed only if the oracle's own accounting (live
        entries on the chip plus ``extra``, the entry bytes refused) leaves no room; else ``false-full``."""
        chip = self._chip(device)
        bad = len(chip.bad_blocks)
        if has_room(chip.live_bytes, extra, self.geometry, bad):
            usable = usable_bytes(self.geometry, bad)
            self._fail(Violation(
                "convergence", "false-full",
                f"{device.name} refused {what} as full, but its flash holds {chip.live_bytes} live entry bytes "
                f"and the refused write {extra} more, of {usable} usable ({len(chip.bad_blocks)} bad block(s)): "
                f"well within what the store must hold",
                {"device": device.name, "live": chip.live_bytes, "refused": extra, "usable": usable}))
            return
        device.full = True

    def _created(self, device: _Device, kind: str, record_id: bytes, key: Key, parent: Key | None,
                 note: str = "") -> None:
        device.pending = None
        version = self.ledger.created(device.name, record_id, key, parent, trio.current_time())
        fields: dict[str, Any] = {"dev": device.name, "op": kind, "rec": record_id.hex()[:8], "v": version.label}
        if parent is not None:
            fields["parent"] = self.ledger.label(parent)
        if note:
            fields["note"] = note
        self.timeline.record("user", **fields)

    def _resolve_pending(self, device: _Device) -> None:
        """After a power cut: did the user operation it interrupted reach flash?"""
        pending = device.pending
        device.pending = None
        if pending is None:
            return
        match, parent, record_id, kind = pending
        chip = self._chip(device)
        for head in chip.heads.values() if chip.mountable else ():
            try:
                record = head.record
            except ValueError:
                continue  # check_device reports it
            if match(record):
                self._created(device, kind, head.record_id, key_of(record), parent,
                              note="committed before the power cut")
                return
        self.timeline.record("user.lost", dev=device.name, op=kind,
                             rec=record_id.hex()[:8] if record_id else None, note="not committed before the cut")

    # ------------------------------------------------------------------ power

    def _power_lost(self, device: _Device) -> None:
        device.handset.power_cut()
        if not device.rebooting:
            device.rebooting = True
            self._work.start_soon(self._reboot_later, device)

    async def _reboot_later(self, device: _Device) -> None:
        await trio.sleep(self.rng.uniform(1.0, 30.0))
        self._reboot(device)

    def _reboot(self, device: _Device) -> None:
        device.rebooting = False
        for _attempt in range(3):
            try:
                device.handset.reboot()
            except PowerLoss:
                self.timeline.record("power.cut", dev=device.name, during="mount")
                continue
            except Exception as exc:
                self._fail(Violation("crash", "mount-failed", f"{device.name} does not boot after a power cut: "
                                     f"{type(exc).__name__}: {exc}", {"device": device.name}))
                return
            self.timeline.record("boot", dev=device.name)
            try:
                self._resolve_pending(device)
            except (StoreError, FlashError) as exc:
                self._fail(self._unreadable(device, exc))
                return
            self._check_device(device)
            return
        self._fail(Violation("crash", "mount-failed", f"{device.name} cannot boot", {"device": device.name}))

    # ------------------------------------------------------------------ nemesis

    async def _nemesis(self, action: str, device: _Device) -> None:
        rng = self.rng
        if action == "backup":
            self.backups.append(self.storage.backup())
            self.backups = self.backups[-6:]
            self.timeline.record("server.backup", n=len(self.backups))
            return
        self.nemesis_count += 1
        if action == "partition":
            self.network.partition(device.name, rng.uniform(5.0, 90.0))
        elif action == "power-cut":
            if not device.handset.powered:
                return
            when = rng.random()
            if when < 0.35:
                self.timeline.record("power.cut", dev=device.name, during="now")
                self._power_lost(device)
            else:
                roll = rng.random()
                variant = "torn" if roll < 0.5 else "prefix" if roll < 0.8 else "clean"
                if when < 0.75:
                    writes = rng.randint(1, 12)
                    device.flash.cut_at_write(writes, variant)
                    self.timeline.record("power.arm", dev=device.name, writes=writes, variant=variant)
                else:
                    erases = rng.randint(1, 3)
                    device.flash.cut_after_erase(erases, variant)
                    self.timeline.record("power.arm", dev=device.name, erases=erases, variant=variant)
        elif action == "clock-jump":
            seconds = rng.uniform(30.0, 400.0)
            self.timeline.record("clock.jump", seconds=round(seconds, 3))
            assert self.clock is not None
            self.clock.jump(seconds)
        elif action == "server-crash" and rng.random() < 0.5:
            writes = rng.randint(1, 4)
            self.store_faults.crash_before(writes, self._aimed_crash)
            self.timeline.record("server.crash-arm", writes=writes)
        elif action in ("server-crash", "server-restart", "server-restore"):
            await self._server_fault(action)
        elif action == "storage-failure":
            kind = rng.choice(FAILURE_KINDS)
            if kind == "disk-full":
                seconds = round(rng.uniform(5.0, 60.0), 3)
                self.store_faults.arm(kind, seconds=seconds)
                self.timeline.record("server.storage-failure", failure=kind, seconds=seconds)
            else:
                count = rng.randint(1, 3)
                self.store_faults.arm(kind, count=count)
                self.timeline.record("server.storage-failure", failure=kind, count=count)

    def _aimed_crash(self) -> bool:
        """The server process dies as it is about to write to its storage (armed by ``server-crash``):
        what is not durable is gone now; the write never happens. False: not now (healing, down)."""
        if self._healing or self.server is None or self.violation is not None:
            return False
        self.storage.crash()
        self._work.start_soon(self._server_fault, "server-crashed")
        return True

    async def _server_fault(self, action: str) -> None:
        rng = self.rng
        if self.server is None:
            return
        if action in ("server-crash", "server-crashed"):
            if action == "server-crash":
                self.storage.crash()
            await self._stop_server("crash")
        elif action == "server-restart":
            await self.storage.aclose()
            await self._stop_server("restart")
        else:
            snapshot = self.backups[min(int(rng.expovariate(0.7)), len(self.backups) - 1)] if self.backups \
                else self.storage.backup()
            await self._stop_server("restore")
            before = self.storage.generation
            self.storage.restore(snapshot)
            if self.storage.generation != before:
                self.generations += 1
            backup_generation = getattr(snapshot, "generation", None)  # a SQLite backup is file bytes
            self.timeline.record("server.restore", generation=f"{self.storage.generation:#x}",
                                 **({} if backup_generation is None else
                                    {"backup_generation": f"{backup_generation:#x}"}))
        await self._check_server()
        self._work.start_soon(self._restart_later, rng.uniform(0.5, 20.0), self._server_epoch)


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return "?"
    code = last.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{last.tb_lineno} {code.co_name}"


def run_world(seed: int, options: SimOptions = SimOptions()) -> RunResult:
    """Run one seed and return its result."""
    return World(seed, options).run()


def with_swarm(result: RunResult) -> SimOptions:
    """The run's options with its swarm and backend made explicit (what shrinking varies)."""
    return replace(result.options, swarm=result.swarm, backend=result.backend)


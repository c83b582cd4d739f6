"""The nemesis at work in a simulated run: the fault-phase steps that break things (a backup taken, a
partition, a power cut now or armed at a later flash write or erase, a clock jump, a server crash,
restart or restore, a storage failure, a server crash armed between a commit and its DURABLE). ``NemesisActions`` is the part of ``World`` that runs them."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import trio

from sidekick_testbed.emulator.sim.clock import SimClock
from sidekick_testbed.emulator.sim.devices import SimDevice
from sidekick_testbed.emulator.sim.network import SimNetwork
from sidekick_testbed.emulator.sim.oracle import Violation
from sidekick_testbed.emulator.sim.storage_faults import FAILURE_KINDS, FailingStorage
from sidekick_testbed.emulator.sim.trace_log import Timeline
from sidekick_testbed.server_stub.server import SyncServer
from sidekick_testbed.server_stub.sim_storage import SimSnapshot

__all__ = ["NemesisActions"]


class NemesisActions:
    """Fault-phase nemesis steps and server faults; a base of ``World``, which provides the attributes
    below and the server's life cycle."""

    rng: random.Random
    timeline: Timeline
    network: SimNetwork
    storage: Any
    store_faults: FailingStorage
    backups: list[SimSnapshot]
    server: SyncServer | None
    clock: SimClock | None
    violation: Violation | None
    nemesis_count: int
    generations: int
    _healing: bool
    _server_epoch: int
    _work: trio.Nursery

    if TYPE_CHECKING:
        def _power_lost(self, device: SimDevice) -> None: ...

        async def _stop_server(self, why: str) -> None: ...

        async def _check_server(self) -> None: ...

        async def _restart_later(self, delay: float, epoch: int) -> None: ...

    # ------------------------------------------------------------------ nemesis

    async def _nemesis(self, action: str, device: SimDevice) -> None:
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
        elif action == "commit-crash":
            commits = rng.randint(1, 3)
            self.store_faults.crash_after_commit(commits, self._aimed_crash)
            self.timeline.record("server.commit-crash-arm", commits=commits)
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
        """The server process dies as it is about to write to its storage (armed by ``server-crash``)
        or as a commit returns (``commit-crash``): what is not durable is gone now; the write never
        happens, the commit is never answered. False: not now (healing, down)."""
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

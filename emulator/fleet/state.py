"""What a fleet run keeps besides its scheduler: each handset's state (``FleetDevice``), the
server's storage as the ledger sees it (``LedgerStorage``), the observer that counts regressions,
and the kinds of event the scheduler's heap holds (``Action``)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

import trio

from sidekick_testbed.emulator.fleet.ledger import Ledger
from sidekick_testbed.emulator.fleet.metrics import FleetMetrics
from sidekick_testbed.emulator.fleet.profiles import NetworkProfile
from sidekick_testbed.emulator.fleet.radio import Coverage, LinkTally
from sidekick_testbed.emulator.handset import Handset
from sidekick_testbed.emulator.handset.transport import Connector
from sidekick_testbed.protocol.messages import Change, Message
from sidekick_testbed.protocol.records import RecordKind
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage

__all__ = ["Action", "FleetDevice", "LedgerStorage", "RegressionCounter"]


class Action(IntEnum):
    """What an event on the scheduler's heap does. ``SERVER_EVENT`` runs one of the scenario's
    server events (its index travels with the event)."""

    CHANGE = 0
    SYNC = 1
    POWER_OFF = 2
    POWER_ON = 3
    SAMPLE = 4
    BACKUP = 5
    OUTAGE_END = 6
    SLOW_END = 7
    END = 8
    SERVER_EVENT = 9


class FleetDevice:
    """One handset with its user, link and schedule state."""

    __slots__ = ("index", "account", "handset", "profile", "coverage", "user_rng", "connector", "tally",
                 "syncing", "sync_due", "dirty", "failures", "seen_generation", "seen_anchor", "live",
                 "serial", "periodic_at")

    def __init__(self, index: int, account: int, profile: NetworkProfile, handset: Handset,
                 user_rng: random.Random, coverage: Coverage, connector: Connector, tally: LinkTally) -> None:
        self.index = index
        self.account = account
        self.profile = profile
        self.handset = handset
        self.user_rng = user_rng
        self.coverage = coverage
        self.connector = connector
        self.tally = tally
        self.syncing = False
        self.sync_due = math.inf
        self.dirty = False
        self.failures = 0
        self.seen_generation = 0
        self.seen_anchor = 0
        self.live: dict[RecordKind, list[bytes]] = {}
        self.serial = 0
        self.periodic_at = 0.0


class LedgerStorage:
    """The server's storage as the fleet sees it: a thin wrapper that tells the ledger what was
    committed, adds the slow disk's commit delay and tracks each account's server version."""

    def __init__(self, inner: SimulatedStorage, ledger: Ledger, account_index: dict[str, int]) -> None:
        self.inner = inner
        self.ledger = ledger
        self.account_index = account_index
        self.commit_delay = 0.0
        self.versions: list[int] = [0] * len(account_index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def generation(self) -> int:
        return self.inner.generation

    @property
    def server_id(self) -> bytes:
        return self.inner.server_id

    async def commit(self, account: str, device_id: bytes, changes: Sequence[Change]) -> Any:
        if self.commit_delay:
            await trio.sleep(self.commit_delay)
        result = await self.inner.commit(account, device_id, changes)
        index = self.account_index[account]
        self.ledger.committed(index, changes)
        self.versions[index] = await self.inner.server_version(account)
        return result


class RegressionCounter:
    """Counts the server regressions handsets detect."""

    def __init__(self, metrics: FleetMetrics) -> None:
        self.metrics = metrics

    def on_message(self, handset: Handset, direction: str, message: Message) -> None:
        pass

    def on_regression(self, handset: Handset, reason: str) -> None:
        self.metrics.regressions += 1

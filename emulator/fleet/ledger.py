"""The fleet's oracle: every record version a user created, whether the server holds it, and losses.

The ledger is independent of the code under test: it learns what users wrote from the engine, what
the server committed from a thin wrapper around the server's storage, and what a restore kept from
the storage's durable state. Only live versions (not deletions) count: a version is *at risk* while
the latest version a user wrote of a record is not durable on the server; it is *lost* once it is
on neither the server nor any handset of its account.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidekick_testbed.protocol.messages import Change
from sidekick_testbed.protocol.records import Record, RecordBody

__all__ = ["ContentKey", "Ledger", "Loss", "UserVersion", "content_key"]

ContentKey = tuple[bytes, RecordBody]


def content_key(record: Record) -> ContentKey | None:
    """What identifies a live version's content: (record id it belongs to, body); None for a
    deletion. A conflict copy belongs to the record it copies."""
    if record.deleted:
        return None
    return (record.conflict_of or record.record_id, record.body)


@dataclass(slots=True)
class UserVersion:
    """The latest live version a user wrote of one record."""

    account: int
    device: int
    record_id: bytes
    kind: str
    body: RecordBody
    created: float
    durable: bool = False
    lost_at: float | None = None

    @property
    def key(self) -> ContentKey:
        return (self.record_id, self.body)


@dataclass(frozen=True, slots=True)
class Loss:
    """A version found on neither the server nor any handset of its account."""

    at: float
    version: UserVersion


class Ledger:
    """Versions per account (``latest``), the ones at risk (oldest first) and the losses."""

    def __init__(self, accounts: int) -> None:
        self.latest: list[dict[bytes, UserVersion]] = [{} for _ in range(accounts)]
        self.at_risk: dict[tuple[int, bytes], UserVersion] = {}
        self.losses: list[Loss] = []
        self.created = 0

    # ------------------------------------------------------------------ what users and the server did

    def wrote(self, account: int, device: int, record_id: bytes, kind: str, body: RecordBody,
              *, deleted: bool, now: float) -> None:
        """A user wrote a version (a deletion ends the record's tracking)."""
        key = (account, record_id)
        self.at_risk.pop(key, None)
        if deleted:
            self.latest[account].pop(record_id, None)
            return
        self.created += 1
        version = UserVersion(account, device, record_id, kind, body, now)
        self.latest[account][record_id] = version
        self.at_risk[key] = version

    def committed(self, account: int, changes: Sequence[Change]) -> None:
        """The server made these changes durable: the matching latest versions are safe."""
        latest = self.latest[account]
        for change in changes:
            record = change.record
            version = latest.get(record.record_id)
            if version is not None and not version.durable and not record.deleted \
                    and version.body == record.body:
                version.durable = True
                self.at_risk.pop((account, record.record_id), None)

    def server_now_holds(self, account: int, durable: Iterable[Record]) -> None:
        """After a restore: re-derive which versions of ``account`` the server still holds."""
        held = {key for key in map(content_key, durable) if key is not None}
        for version in self.latest[account].values():
            if version.lost_at is not None:
                continue
            version.durable = version.key in held
            if version.durable:
                self.at_risk.pop((account, version.record_id), None)
            else:
                self.at_risk[(account, version.record_id)] = version

    def reorder(self) -> None:
        """Keep ``at_risk`` ordered by creation time (after re-insertions by a restore)."""
        self.at_risk = dict(sorted(self.at_risk.items(), key=lambda item: (item[1].created, item[0])))

    # ------------------------------------------------------------------ losses

    def check_account(self, account: int, holds: dict[int, set[ContentKey]], now: float) -> int:
        """Declare lost every at-risk version of ``account`` that no handset holds. ``holds`` maps
        each handset of the account to the contents its flash holds (on or off: read from the chip,
        the same for every handset behaviour). Returns the number of new losses."""
        found = 0
        for version in list(self.latest[account].values()):
            if version.durable or version.lost_at is not None:
                continue
            if any(version.key in held for held in holds.values()):
                continue
            version.lost_at = now
            self.at_risk.pop((account, version.record_id), None)
            self.losses.append(Loss(now, version))
            found += 1
        return found

    def final_check(self, account: int, held: set[ContentKey], now: float) -> None:
        """After the final heal: every latest live version not in ``held`` (server and handsets
        of the account together) is lost; one found earlier keeps its time."""
        for version in self.latest[account].values():
            if version.key in held or version.lost_at is not None:
                continue
            version.lost_at = now
            self.at_risk.pop((account, version.record_id), None)
            self.losses.append(Loss(now, version))

    # ------------------------------------------------------------------ figures

    def oldest_at_risk(self, now: float) -> float:
        """Age in seconds of the oldest version at risk (0 if none)."""
        for version in self.at_risk.values():
            return now - version.created
        return 0.0

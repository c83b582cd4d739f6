"""The world's handsets: what the world knows of each (``SimDevice``), and what users and power cuts
do to them (``DeviceActions``, the part of ``World`` that runs user operations, records what they
created in the ledger and reboots handsets after a power cut)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import trio

from sidekick_testbed.emulator.flash import FlashError, Geometry, PowerLoss
from sidekick_testbed.emulator.handset import Handset, HandsetError
from sidekick_testbed.emulator.sim.capacity import has_room, head_bytes, record_bytes, usable_bytes
from sidekick_testbed.emulator.sim.flash_reader import ChipView
from sidekick_testbed.emulator.sim.ledger import Key, Ledger, key_of
from sidekick_testbed.emulator.sim.oracle import Violation
from sidekick_testbed.emulator.sim.simflash import SimFlash
from sidekick_testbed.emulator.sim.trace_log import Timeline
from sidekick_testbed.emulator.sim.workload import UserOp, Workload
from sidekick_testbed.emulator.store import StoreError, StoreFull
from sidekick_testbed.protocol.records import Photo, Record

__all__ = ["DeviceActions", "SimDevice", "cut_op_match"]


@dataclass(eq=False)
class SimDevice:
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
    beyond: bool = False
    """Nothing more can be freed (``_free_space``): its user deleted everything whose deletion frees
    space and the oracle's accounting still finds no room for what it must pull, or the delete
    meant to free space was itself refused as full (and the oracle believes it). If its store then
    refuses the pull as full (believed too), the one handset left out of the convergence check."""
    device_id: bytes = b""
    """The id the device named in its last HELLO."""
    last_good: ChipView | None = None
    """The chip as the last check that passed read it (what a later loss is compared with)."""
    checked_at: tuple[int, int] = (-1, -1)
    """The server generation and ``Ledger.changes`` that check saw."""
    writing: Record | None = None
    """What the user is writing (its size counts if the store refuses it as full)."""
    refused: int = 0
    """Entry bytes of the user's write the store last refused as full (room its user frees at heal)."""
    freed: bool = False
    """Its user freed space since its last sync that worked (``_free_space``)."""
    refused_op: UserOp | None = None
    """That write, which its user tries again once the room is made."""
    last_error: int | None = None
    """The code of the last ERROR the handset received in the sync under way."""
    pulled: list[Record] = field(default_factory=list)
    """The records of the pull under way, as the device received them."""
    rebooting: bool = False
    pending: tuple[Callable[[Any], bool], Key | None, bytes | None, str] | None = None


def _rewrite_bytes(chip: ChipView, geometry: Geometry) -> int:
    """Entry bytes of a rewrite of every head on ``chip`` (the most a sync's bookkeeping writes)."""
    return sum(head_bytes(head.record, geometry) for head in chip.heads.values())


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


class DeviceActions:
    """User operations and power cuts on the world's handsets; a base of ``World``, which provides
    the attributes below and the oracle's checks."""

    geometry: Geometry
    workload: Workload
    timeline: Timeline
    ledger: Ledger
    rng: random.Random
    _work: trio.Nursery

    if TYPE_CHECKING:
        def _chip(self, device: SimDevice) -> ChipView: ...

        def _fail(self, violation: Violation) -> None: ...

        def _check_device(self, device: SimDevice) -> None: ...

        @staticmethod
        def _unreadable(device: SimDevice, exc: Exception) -> Violation: ...

    # ------------------------------------------------------------------ users

    def _user(self, device: SimDevice, again: UserOp | None = None) -> None:
        """One user operation: drawn from the workload, or ``again``, a write the store refused as
        full (tried again once space is freed; an edit of a record no longer live is let go)."""
        handset = device.handset
        if not handset.powered:
            return
        op = again
        try:
            heads = handset.store.records()
            live = [(v.record.record_id, v.record.body) for v in heads if not v.record.deleted]
            old = frozenset(v.record.record_id for v in heads)
            if op is None:
                op = self.workload.next_op(live)
            elif op.record_id is not None and op.record_id not in dict(live):
                return
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
            device.refused = record_bytes(writing, self.geometry) if writing is not None else 0
            if op is not None and writing is not None:   # of an import, the add that was refused
                device.refused_op = UserOp("add", body=writing.body) if op.kind == "import" else op
            self._store_full(device, "a user's write", device.refused)
        except (StoreError, FlashError, HandsetError) as exc:
            device.pending = None
            self._fail(Violation("crash", "device-store", f"{device.name}: a user operation failed: "
                                 f"{type(exc).__name__}: {exc}", {"device": device.name}))

    def _sync_refused(self, device: SimDevice) -> None:
        """A sync failed on ``StoreFull``: weighed against the records of the pull under way, or a
        rewrite of every head for the sync bookkeeping, whichever is larger."""
        chip = self._chip(device)
        pulled = sum(record_bytes(record, self.geometry) for record in device.pulled)
        self._store_full(device, "a sync", max(pulled, _rewrite_bytes(chip, self.geometry)))

    def _store_full(self, device: SimDevice, what: str, extra: int) -> None:
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

    def _free_space(self, device: SimDevice, server_heads: list[Record]) -> None:
        """A full handset's user frees space at heal: deletes the live record whose deletion frees the
        most by the oracle's accounting (a photo's image, FLASH.md; a tombstone keeps its body, so
        deleting anything else frees nothing), one at a time, until the chip has room within the
        capacity promise for what the handset must still take (the server's heads it does not hold
        as they are, less what they replace, and the user's write it refused; once that was not
        enough, also the sync's rewrite of every head, what ``_sync`` weighs a refusal against),
        then tries that write again; or until nothing left would free space (``beyond``).
        Each delete is a user edit like any other (ledger, push)."""
        handset = device.handset
        geometry = self.geometry
        while handset.powered:
            chip = self._chip(device)
            held = {rid: head.record for rid, head in chip.heads.items()}
            pulls = sum(record_bytes(record, geometry) - (record_bytes(old, geometry) if old is not None else 0)
                        for record in server_heads
                        if (old := held.get(record.record_id)) is None or key_of(old) != key_of(record))
            need = pulls + device.refused
            if device.freed:   # freed once and refused again: room for the sync's rewrite of every head too
                need = max(need, _rewrite_bytes(chip, geometry))
            if has_room(chip.live_bytes, need, geometry, len(chip.bad_blocks)):
                device.freed = True
                again, device.refused, device.refused_op = device.refused_op, 0, None
                if again is not None:
                    self._user(device, again)   # the room was made for the write the store refused
                return
            gains = [(record_bytes(v.record, geometry) - head_bytes(replace(v.record, deleted=True), geometry),
                      v.record.record_id, v.record)
                     for v in handset.store.records() if not v.record.deleted]
            gain, record_id, record = max(gains, default=(0, b"", None), key=lambda g: (g[0], g[1]))
            if gain <= 0 or record is None:
                if not device.beyond:
                    self.timeline.record("full.nothing-to-free", dev=device.name, live=chip.live_bytes, need=need,
                                         usable=usable_bytes(geometry, len(chip.bad_blocks)))
                device.beyond = True
                return
            parent = key_of(record)
            key: Key = (True, record.body)
            device.writing = replace(record, deleted=True)
            try:
                handset.delete(record_id)
            except StoreFull:
                self.timeline.record("user.full", dev=device.name)
                self._store_full(device, "a delete that frees space", head_bytes(device.writing, geometry))
                if self.violation is None:   # the oracle agrees: not even a delete fits, nothing can be freed
                    if not device.beyond:
                        self.timeline.record("full.delete-refused", dev=device.name, live=chip.live_bytes,
                                             usable=usable_bytes(geometry, len(chip.bad_blocks)))
                    device.beyond = True
                return
            except (StoreError, FlashError, HandsetError) as exc:
                self._fail(Violation("crash", "device-store", f"{device.name}: a user's delete failed: "
                                     f"{type(exc).__name__}: {exc}", {"device": device.name}))
                return
            self._created(device, "delete", record_id, key, parent, note="to free space")
            self._check_device(device)

    def _created(self, device: SimDevice, kind: str, record_id: bytes, key: Key, parent: Key | None,
                 note: str = "") -> None:
        device.pending = None
        version = self.ledger.created(device.name, record_id, key, parent, trio.current_time())
        fields: dict[str, Any] = {"dev": device.name, "op": kind, "rec": record_id.hex()[:8], "v": version.label}
        if parent is not None:
            fields["parent"] = self.ledger.label(parent)
        if note:
            fields["note"] = note
        self.timeline.record("user", **fields)

    def _resolve_pending(self, device: SimDevice) -> None:
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

    def _power_lost(self, device: SimDevice) -> None:
        device.handset.power_cut()
        if not device.rebooting:
            device.rebooting = True
            self._work.start_soon(self._reboot_later, device)

    async def _reboot_later(self, device: SimDevice) -> None:
        await trio.sleep(self.rng.uniform(1.0, 30.0))
        self._reboot(device)

    def _reboot(self, device: SimDevice) -> None:
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

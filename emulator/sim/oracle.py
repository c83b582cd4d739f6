"""The invariants, checked against the ledger (never against the code's own bookkeeping).

1. ``discard-before-durable``: a device never drops (or marks clean, or acknowledges a pull of)
   a version before the server confirmed it DURABLE in the server's current generation;
2. ``durable-lost``: a server keeping its generation never loses a version it confirmed, never
   claims durable what it was not asked to commit, never advances an anchor without PULL_ACK,
   never applies one (device, LSN) twice, never acknowledges blob bytes no device sent, never
   assigns in DURABLE a version to a change it does not confirm or was not pushed, nor another
   version than its history keeps as what that change produced;
3. ``convergence``: after heal, every leaf version is on the server (head or conflict copy) and
   every device of its account holds exactly the server's live records; syncs go quiet;
4. ``crash``: no untyped exception, no corrupt store after a power cut, no hang (sim-time watchdog),
   no server ERROR misread by a handset (its code, and refused credentials only for AUTH_FAILED).

Handsets are read by the oracle's own reader of the on-flash format (``emulator.sim.flash_reader``),
never through the record store under test: what counts is what a reboot would find on the chip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidekick_testbed.emulator.handset.sync_errors import AuthRefused, ServerError, SyncError
from sidekick_testbed.emulator.sim.flash_reader import DURABLE, ChipView
from sidekick_testbed.emulator.sim.ledger import Key, Ledger, key_of
from sidekick_testbed.protocol.errors import ErrorCode
from sidekick_testbed.protocol.messages import BlobAck, Durable, HelloOk, Message, PullAck
from sidekick_testbed.protocol.records import Photo, Record

__all__ = ["INVARIANTS", "Violation", "check_chip", "check_device", "check_failure", "check_heal",
           "check_server_history", "check_wire"]

INVARIANTS = {
    "discard-before-durable": "1: no device discards a version before DURABLE in the server's current generation",
    "durable-lost": "2: a server keeping its generation never loses (or overclaims) what it confirmed DURABLE",
    "convergence": "3: after heal every leaf version is on the server and on every device of its account",
    "crash": "4: no crash, hang or untyped exception",
}


@dataclass(frozen=True)
class Violation:
    """A broken invariant: which, what exactly, and the versions and devices involved."""

    invariant: str
    what: str
    text: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for traces."""
        return {"invariant": self.invariant, "what": self.what, "text": self.text, "details": self.details}


def _rid(record_id: bytes) -> str:
    return record_id.hex()[:8]


# ---------------------------------------------------------------------------------------- 1


def check_chip(device: str, chip: ChipView) -> Violation | None:
    """What the chip itself must show: a store that mounts, heads that decode, and no head whose LSN
    a reboot would hand out again (every local LSN is below the persisted next LSN)."""
    if not chip.mountable:
        return Violation("crash", "store-unreadable", f"{device}'s flash holds no mountable store: {chip.problem}",
                         {"device": device, "problem": chip.problem})
    assert chip.meta is not None
    next_lsn = chip.meta.next_lsn
    for record_id, head in chip.heads.items():
        try:
            head.record  # noqa: B018 - decodes
        except ValueError as exc:
            return Violation("crash", "store-unreadable", f"{device}'s flash: {exc}",
                             {"device": device, "record": record_id.hex()})
        if head.lsn >= next_lsn:
            return Violation(
                "discard-before-durable", "lsn-reuse",
                f"{device}'s flash holds record {_rid(record_id)} with LSN {head.lsn} but the persisted next "
                f"LSN is {next_lsn}: after a reboot a new version would get an LSN the server already took, "
                f"and be acknowledged as a duplicate without being applied",
                {"device": device, "record": record_id.hex(), "lsn": head.lsn, "next_lsn": next_lsn},
            )
    return None


def check_device(ledger: Ledger, device: str, chip: ChipView, generation: int) -> Violation | None:
    """Invariant 1 for one device, on what its flash holds: every own leaf version not confirmed
    DURABLE in ``generation`` (the server's current one) is still the head, and not marked clean."""
    violation = check_chip(device, chip)
    if violation is not None:
        return violation
    track = ledger.devices[device]
    heads = chip.heads
    for record_id, key in list(track.own.items()):
        version = ledger.versions[key]
        if not version.leaf:
            del track.own[record_id]
            continue
        confirmed = generation in track.confirmed.get(key, ())
        head = heads.get(record_id)
        if head is None or key_of(head.record) != key:
            if confirmed:
                del track.own[record_id]  # released after DURABLE: allowed
                ledger.released.setdefault(key, set()).add(generation)
                continue
            now = "nothing" if head is None else (
                f"{ledger.label(key_of(head.record))} ({'tombstone' if head.deleted else 'live'})")
            return Violation(
                "discard-before-durable", "discarded",
                f"{device} discarded {version.label} of record {_rid(record_id)} before the server confirmed "
                f"it DURABLE in generation {generation:#x}; its flash now holds {now}",
                {"device": device, "version": version.label, "record": record_id.hex(),
                 "generation": generation, "now": now},
            )
        body = head.record.body
        if isinstance(body, Photo) and not head.deleted and not confirmed and body.blob_id not in chip.blobs:
            return Violation(
                "discard-before-durable", "blob-discarded",
                f"{device} lost the image of photo {version.label} (blob {body.blob_id.hex()[:8]}) before the "
                f"server confirmed the photo DURABLE",
                {"device": device, "version": version.label, "blob": body.blob_id.hex()},
            )
        if head.state == DURABLE and head.generation == generation and not confirmed:
            return Violation(
                "discard-before-durable", "marked-clean",
                f"{device} marked {version.label} of record {_rid(record_id)} clean (DURABLE in "
                f"{generation:#x}) without having received DURABLE for it",
                {"device": device, "version": version.label, "record": record_id.hex(), "generation": generation},
            )
    return None


# ---------------------------------------------------------------------------------------- wire


def check_wire(ledger: Ledger, device: str, direction: str, message: Message,
               chip: ChipView | None, failed_lsns: set[int] | None = None) -> Violation | None:
    """Protocol promises visible on one message (called before the ledger learns of it); ``chip``:
    the device's flash as it is when it sends PULL_ACK; ``failed_lsns``: LSNs of this device whose
    commit failed in the server's storage and was not redone since."""
    track = ledger.devices[device]
    if direction == "received" and isinstance(message, Durable) and failed_lsns:
        claimed = sorted(lsn for lsn in failed_lsns if lsn <= message.durable_lsn and lsn in track.session_pushes)
        if claimed:
            return Violation(
                "durable-lost", "durable-after-failed-commit",
                f"the server told {device} in DURABLE that LSN {message.durable_lsn} is durable, but the "
                f"storage commit of LSN {', '.join(map(str, claimed[:6]))} (pushed in this session) failed",
                {"device": device, "claimed": message.durable_lsn, "failed": claimed},
            )
    if direction == "sent" and isinstance(message, PullAck) and chip is not None and chip.meta is not None:
        if chip.meta.anchor < message.anchor:
            return Violation(
                "discard-before-durable", "pull-ack-before-flash",
                f"{device} sent PULL_ACK({message.anchor}) before the pulled records were on flash "
                f"(the anchor on its flash is {chip.meta.anchor})",
                {"device": device, "ack": message.anchor, "stored_anchor": chip.meta.anchor},
            )
    if direction != "received":
        return None
    if isinstance(message, HelloOk | Durable) and message.durable_lsn > track.max_commit_lsn:
        name = "HELLO_OK" if isinstance(message, HelloOk) else "DURABLE"
        return Violation(
            "durable-lost", "overclaimed-watermark",
            f"the server told {device} in {name} that LSN {message.durable_lsn} is durable, but the device "
            f"never asked to commit beyond LSN {track.max_commit_lsn}",
            {"device": device, "claimed": message.durable_lsn, "committed": track.max_commit_lsn},
        )
    if isinstance(message, Durable):
        other = _listed_other(message, track.session_pushes)
        if other is not None:
            return Violation("durable-lost", other[0], f"the server's DURABLE to {device} {other[1]}",
                             {"device": device, "watermark": message.durable_lsn,
                              "assigned": [a.lsn for a in message.assigned]})
    if isinstance(message, BlobAck) and track.chunk_sent is not None and track.chunk_sent[0] == message.blob_id \
            and message.have != track.chunk_sent[1]:
        return Violation(
            "durable-lost", "wrong-blob-receipt",
            f"the server answered {device}'s BLOB_CHUNK ending at byte {track.chunk_sent[1]} of blob "
            f"{message.blob_id.hex()[:8]} with BLOB_ACK have={message.have}: an accepted chunk is held "
            f"up to its end (PROTOCOL.md section 14)",
            {"device": device, "blob": message.blob_id.hex(), "sent_to": track.chunk_sent[1], "have": message.have},
        )
    if isinstance(message, BlobAck) and track.blob_query == message.blob_id:
        sent = ledger.blob_bytes_sent(track.account, message.blob_id)
        if message.have > sent:
            return Violation(
                "durable-lost", "wrong-blob-receipt",
                f"the server answered {device}'s BLOB_QUERY for blob {message.blob_id.hex()[:8]} with "
                f"BLOB_ACK have={message.have}, but the devices of {track.account} sent only {sent} bytes of "
                f"it: a server holds no byte it was not sent (PROTOCOL.md section 14)",
                {"device": device, "blob": message.blob_id.hex(), "sent_to": sent, "have": message.have},
            )
    if isinstance(message, HelloOk) and message.anchor > track.max_pull_ack:
        return Violation(
            "durable-lost", "anchor-without-pull-ack",
            f"the server holds anchor {message.anchor} for {device}, which never acknowledged a pull beyond "
            f"{track.max_pull_ack}",
            {"device": device, "anchor": message.anchor, "acked": track.max_pull_ack},
        )
    return None


def _listed_other(durable: Durable, pushed: Mapping[int, Key]) -> tuple[str, str] | None:
    """R-DUR-6's "no other entry": DURABLE lists only changes the device pushed in this session
    at or below its watermark (a DURABLE cut to one frame lowers the watermark to what it lists).
    Returns the violation's name and text, or None."""
    above = [a.lsn for a in durable.assigned if a.lsn > durable.durable_lsn]
    if above:
        return ("assigned-above-watermark",
                f"lists LSN {', '.join(map(str, above[:6]))} above its watermark {durable.durable_lsn}: "
                f"it assigns versions only to changes it confirms durable (R-DUR-6)")
    unpushed = [a.lsn for a in durable.assigned if a.lsn not in pushed]
    if unpushed:
        return ("assigned-not-pushed",
                f"lists LSN {', '.join(map(str, unpushed[:6]))}, which the device did not push in this "
                f"session (R-DUR-6)")
    return None


# ---------------------------------------------------------------------------------------- 2


def check_server_history(ledger: Ledger, account: str, generation: int, history: Sequence[Any],
                         device_names: dict[bytes, str]) -> Violation | None:
    """Invariant 2 on the server's history of one account (``StoredVersion`` items)."""
    held = {key_of(item.record) for item in history}
    for device, key in ledger.confirmed_keys(generation, account):
        if key not in held:
            version = ledger.versions.get(key)
            label = version.label if version else "?"
            return Violation(
                "durable-lost", "lost",
                f"the server confirmed {label} DURABLE to {device} in generation {generation:#x} and has lost "
                f"it without changing generation",
                {"device": device, "version": label, "generation": generation},
            )
    seen: dict[tuple[bytes, int], Record] = {}
    for item in history:
        if item.device_id is None or item.lsn is None:
            continue
        where = (bytes(item.device_id), int(item.lsn))
        if where in seen:
            name = device_names.get(where[0], where[0].hex()[:8])
            return Violation(
                "durable-lost", "applied-twice",
                f"the server applied change LSN {where[1]} of {name} twice (versions {seen[where].version} "
                f"and {item.record.version} of record {_rid(item.record.record_id)})",
                {"device": name, "lsn": where[1], "versions": [seen[where].version, item.record.version]},
            )
        seen[where] = item.record
    for (device_id, lsn, given_in), version in ledger.assigned.items():
        produced = seen.get((device_id, lsn))
        if given_in != generation or produced is None or produced.version == version:
            continue
        name = device_names.get(device_id, device_id.hex()[:8])
        return Violation(
            "durable-lost", "wrong-assigned-version",
            f"a DURABLE gave change LSN {lsn} of {name} version {version}, but the server keeps version "
            f"{produced.version} of record {_rid(produced.record_id)} as what that change produced (R-DUR-6)",
            {"device": name, "lsn": lsn, "assigned": version, "kept": produced.version},
        )
    return None


# ---------------------------------------------------------------------------------------- 3


def _live(records: Iterable[Record]) -> dict[bytes, Key]:
    return {r.record_id: key_of(r) for r in records if not r.deleted}


def check_heal(ledger: Ledger, account: str, server_heads: Sequence[Record],
               device_heads: Mapping[str, Sequence[Record]], released_before: set[Key],
               device_blobs: Mapping[str, set[bytes]] | None = None) -> Violation | None:
    """Invariant 3 for one account after heal. ``released_before``: versions devices let go of
    (after DURABLE) in an older generation, which a restore may legitimately have lost, and versions
    only a full handset holds (it cannot push them; they are kept, not lost)."""
    on_server = {key_of(r) for r in server_heads}
    for version in ledger.leaves(account):
        if version.key in on_server or version.key in released_before:
            continue
        return Violation(
            "convergence", "missing-on-server",
            f"after heal, leaf version {version.label} of record {_rid(version.record_id)} (made on "
            f"{', '.join(version.creators)}) is not on the server, neither as head nor as conflict copy",
            {"version": version.label, "record": version.record_id.hex(), "creators": version.creators},
        )
    server_live = _live(server_heads)
    for device, heads in sorted(device_heads.items()):
        live = _live(heads)
        missing = sorted(set(server_live) - set(live))
        extra = sorted(set(live) - set(server_live))
        differ = sorted(rid for rid in set(live) & set(server_live) if live[rid] != server_live[rid])
        if missing or extra or differ:
            def show(rids: list[bytes], source: dict[bytes, Key]) -> list[str]:
                return [f"{_rid(rid)}={ledger.label(source[rid])}" for rid in rids[:6]]
            return Violation(
                "convergence", "diverged",
                f"after heal, {device} differs from the server: missing {show(missing, server_live)}, "
                f"extra {show(extra, live)}, different {show(differ, live)} (server has "
                f"{show(differ, server_live)})",
                {"device": device, "missing": [r.hex() for r in missing], "extra": [r.hex() for r in extra],
                 "different": [r.hex() for r in differ]},
            )
        blobs = (device_blobs or {}).get(device)
        if blobs is None:
            continue
        for record in heads:
            body = record.body
            if isinstance(body, Photo) and not record.deleted and body.blob_id not in blobs:
                return Violation(
                    "convergence", "blob-missing",
                    f"after heal, {device} shows photo {ledger.label(key_of(record))} (record "
                    f"{_rid(record.record_id)}) without its image (blob {body.blob_id.hex()[:8]})",
                    {"device": device, "record": record.record_id.hex(), "blob": body.blob_id.hex()},
                )
    return None


# ---------------------------------------------------------------------------------------- 4


def check_failure(device: str, error: SyncError, received: int | None) -> Violation | None:
    """How a handset reads a server's ERROR (``received``: the code of the last ERROR it received in
    the sync): a sync that fails on a server error reports that code, as refused credentials (which
    a handset does not retry) exactly when it is AUTH_FAILED."""
    if not isinstance(error, ServerError):
        return None
    refused = received == ErrorCode.AUTH_FAILED
    if received is not None and error.code == received and isinstance(error, AuthRefused) == refused:
        return None
    said = "no ERROR" if received is None else f"ERROR {_code_name(received)}"
    return Violation("crash", "misread-error",
                     f"{device}'s sync failed with {type(error).__name__} ({error}), but the server sent {said}",
                     {"device": device, "raised": type(error).__name__, "received": received})


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"0x{code:04x}"

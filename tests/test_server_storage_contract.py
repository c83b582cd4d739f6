"""One contract suite, run against both storage backends (simulated and SQLite)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from sidekick_testbed.protocol.messages import Assigned, Change
from sidekick_testbed.protocol.records import Contact, Note, Record
from sidekick_testbed.server_stub.semantics import conflict_copy_id
from sidekick_testbed.server_stub.sim_storage import SimulatedStorage
from sidekick_testbed.server_stub.sqlite_storage import SqliteStorage
from sidekick_testbed.server_stub.storage import (
    AccountExists,
    AnchorAhead,
    BlobError,
    BlobState,
    Storage,
    UnknownAccount,
)

KEY = b"k" * 32
D1 = b"\x01" * 16
D2 = b"\x02" * 16
R1 = b"\xaa" * 16
R2 = b"\xbb" * 16


def make(kind: str, tmp: Path, seed: int = 0) -> Any:
    if kind == "sim":
        return SimulatedStorage(random.Random(seed))
    if kind == "sim-packed":
        return SimulatedStorage(random.Random(seed), pack_blobs=True)
    return SqliteStorage(tmp / "store.db", rng=random.Random(seed))


@pytest.fixture(params=["sim", "sim-packed", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    storage = make(request.param, tmp_path)
    await storage.add_account("alice", KEY)
    yield storage
    await storage.aclose()


def change(lsn: int, rid: bytes, title: str, base: int = 0, deleted: bool = False) -> Change:
    return Change(lsn, base, Record(rid, 0, deleted, Note(title, "body")))


async def test_both_backends_satisfy_the_protocol(store: Any) -> None:
    assert isinstance(store, Storage)
    assert len(store.server_id) == 16
    assert store.generation != 0


async def test_accounts(store: Any) -> None:
    assert await store.account_key("alice") == KEY
    assert await store.account_key("bob") is None
    with pytest.raises(AccountExists):
        await store.add_account("alice", KEY)
    await store.add_account("bob", b"b" * 32)
    assert [a.account for a in await store.list_accounts()] == ["alice", "bob"]
    await store.remove_account("bob")
    assert await store.account_key("bob") is None
    with pytest.raises(UnknownAccount):
        await store.remove_account("bob")


async def test_commit_assigns_versions_and_watermark(store: Any) -> None:
    result = await store.commit("alice", D1, [change(3, R1, "a"), change(7, R2, "b")])
    assert result.generation == store.generation
    assert result.durable_lsn == 7
    assert result.assigned == (Assigned(3, R1, 1), Assigned(7, R2, 2))
    assert result.conflicts == ()
    state = await store.device_state("alice", D1)
    assert (state.durable_lsn, state.anchor, state.generation) == (7, 0, store.generation)
    assert [r.version for r in await store.records("alice")] == [1, 2]


async def test_duplicate_lsn_is_not_applied_again(store: Any) -> None:
    await store.commit("alice", D1, [change(1, R1, "a")])
    again = await store.commit("alice", D1, [change(1, R1, "a"), change(2, R2, "b")])
    assert again.assigned == (Assigned(1, R1, 1), Assigned(2, R2, 2))
    history = await store.history("alice")
    assert [(v.device_id, v.lsn) for v in history] == [(D1, 1), (D1, 2)]
    assert await store.server_version("alice") == 2


async def test_conflict_keeps_overwritten_head_as_copy(store: Any) -> None:
    await store.commit("alice", D1, [change(1, R1, "original")])
    await store.commit("alice", D1, [change(2, R1, "edit by one", base=1)])
    result = await store.commit("alice", D2, [change(1, R1, "edit by two", base=1)])
    copy_id = conflict_copy_id(R1, 2)
    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert (conflict.lsn, conflict.record_id, conflict.server_version, conflict.copy_id) == (1, R1, 2, copy_id)
    heads = {r.record_id: r for r in await store.records("alice")}
    assert heads[R1].body == Note("edit by two", "body") and heads[R1].version == 3
    assert heads[copy_id].body == Note("edit by one", "body")
    assert heads[copy_id].conflict_of == R1 and heads[copy_id].version == 4


async def test_a_conflict_copy_never_overwrites_a_record_at_its_id(store: Any) -> None:
    # After a restore, versions are numbered again and a copy id can already be taken (R-CONFLICT-8).
    taken = conflict_copy_id(R1, 3)
    await store.commit("alice", D1, [change(1, R1, "original")])
    await store.commit("alice", D1, [change(2, taken, "a record already at that id")])
    await store.commit("alice", D1, [change(3, R1, "edit by one", base=1)])
    result = await store.commit("alice", D2, [change(1, R1, "edit by two", base=1)])
    assert [c.copy_id for c in result.conflicts] == [conflict_copy_id(R1, 3, 1)]
    heads = {r.record_id: r for r in await store.records("alice")}
    assert heads[taken].body == Note("a record already at that id", "body")
    assert heads[conflict_copy_id(R1, 3, 1)].body == Note("edit by one", "body")


async def test_same_content_is_a_noop(store: Any) -> None:
    await store.commit("alice", D1, [change(1, R1, "same")])
    result = await store.commit("alice", D2, [change(5, R1, "same", base=0)])
    assert result.assigned == (Assigned(5, R1, 1),)
    assert result.conflicts == ()
    assert await store.server_version("alice") == 1
    assert (await store.device_state("alice", D2)).durable_lsn == 5


async def test_tombstone_over_stale_edit_keeps_live_copy(store: Any) -> None:
    await store.commit("alice", D1, [change(1, R1, "v1")])
    await store.commit("alice", D1, [change(2, R1, "v2", base=1)])
    result = await store.commit("alice", D2, [change(1, R1, "v1", base=1, deleted=True)])
    heads = {r.record_id: r for r in await store.records("alice")}
    assert heads[R1].deleted
    copy = heads[result.conflicts[0].copy_id]
    assert not copy.deleted and copy.body == Note("v2", "body")


async def test_pull_pages_in_version_order(store: Any) -> None:
    rng = random.Random(4)
    ids = [rng.randbytes(16) for _ in range(5)]
    await store.commit("alice", D1, [change(i + 1, rid, f"n{i}") for i, rid in enumerate(ids)])
    await store.commit("alice", D1, [change(6, ids[0], "n0 again", base=1)])
    first = await store.pull("alice", 0, 2)
    assert [r.version for r in first.records] == [2, 3] and first.more and first.anchor == 3
    second = await store.pull("alice", first.anchor, 10)
    assert [r.version for r in second.records] == [4, 5, 6] and not second.more and second.anchor == 6
    empty = await store.pull("alice", 6, 10)
    assert empty.records == () and empty.anchor == 6 and not empty.more
    with pytest.raises(AnchorAhead):
        await store.pull("alice", 7, 10)


async def test_ack_pull_keeps_the_larger_anchor(store: Any) -> None:
    await store.commit("alice", D1, [change(1, R1, "a"), change(2, R2, "b")])
    assert await store.ack_pull("alice", D1, 2) == 2
    assert await store.ack_pull("alice", D1, 1) == 2
    assert (await store.device_state("alice", D1)).anchor == 2
    assert (await store.device_state("alice", D2)).anchor == 0


async def test_blob_chunks_resume_and_refuse(store: Any) -> None:
    blob = b"\x10" * 16
    data = bytes(range(256)) * 3
    assert await store.blob_state("alice", blob) == BlobState(0, 0)
    assert await store.write_blob("alice", blob, 0, len(data), data[:300]) == 300
    assert await store.blob_state("alice", blob) == BlobState(300, len(data))  # R-BLOB-1: held in part
    with pytest.raises(BlobError) as offset:
        await store.write_blob("alice", blob, 100, len(data), data[100:200])
    assert offset.value.offset_mismatch
    with pytest.raises(BlobError) as total:
        await store.write_blob("alice", blob, 300, len(data) + 1, data[300:])
    assert not total.value.offset_mismatch
    assert await store.read_blob("alice", blob) is None
    assert await store.write_blob("alice", blob, 300, len(data), data[300:]) == len(data)
    assert await store.read_blob("alice", blob) == data
    assert await store.blob_state("alice", blob) == BlobState(len(data), len(data))


async def test_accounts_are_isolated(store: Any) -> None:
    await store.add_account("bob", b"b" * 32)
    await store.commit("alice", D1, [change(1, R1, "alice's")])
    blob = b"\x11" * 16
    await store.write_blob("alice", blob, 0, 3, b"abc")
    assert await store.records("bob") == []
    assert await store.read_blob("bob", blob) is None
    assert (await store.device_state("bob", D1)).durable_lsn == 0
    page = await store.pull("bob", 0, 10)
    assert page.records == ()
    with pytest.raises(UnknownAccount):
        await store.commit("carol", D1, [change(1, R1, "x")])


async def test_restore_gets_a_new_generation(store: Any) -> None:
    await store.commit("alice", D1, [change(1, R1, "kept")])
    snapshot = store.backup()
    before = store.generation
    await store.commit("alice", D1, [change(2, R2, "lost by the restore")])
    generation = store.restore(snapshot)
    assert generation == store.generation != before
    assert [r.record_id for r in await store.records("alice")] == [R1]
    assert (await store.device_state("alice", D1)).durable_lsn == 1
    server_id = store.server_id
    assert store.server_id == server_id


@pytest.mark.parametrize("kind", ["sim", "sqlite"])
async def test_committed_changes_survive_a_crash(kind: str, tmp_path: Path) -> None:
    storage = make(kind, tmp_path)
    await storage.add_account("alice", KEY)
    await storage.commit("alice", D1, [change(1, R1, "durable")])
    generation = storage.generation
    if kind == "sim":
        storage.crash()
        reopened = storage
    else:  # no clean close: the writer's connection is dropped as a kill would
        await storage._writer.aclose()
        reopened = SqliteStorage(tmp_path / "store.db", rng=random.Random(9))
    assert [r.record_id for r in await reopened.records("alice")] == [R1]
    assert (await reopened.device_state("alice", D1)).durable_lsn == 1
    assert reopened.generation == generation
    await reopened.aclose()


async def test_sqlite_commits_share_transactions_when_concurrent(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "g.db", rng=random.Random(1))
    await storage.add_account("alice", KEY)
    rng = random.Random(2)
    before = storage.transactions

    async def one(device: int) -> None:
        dev = bytes([device]) * 16
        await storage.commit("alice", dev, [change(1, rng.randbytes(16), f"d{device}")])

    async with trio.open_nursery() as nursery:
        for device in range(1, 21):
            nursery.start_soon(one, device)
    assert len(await storage.records("alice")) == 20
    assert storage.transactions - before < 20  # at least two commits shared a transaction
    await storage.aclose()


# -------------------------------------------------------------------------------- equivalence

ops = st.lists(
    st.tuples(
        st.sampled_from([D1, D2]),
        st.lists(st.tuples(st.sampled_from([R1, R2, b"\xcc" * 16]), st.sampled_from(["x", "y", "z"]),
                           st.integers(0, 4), st.booleans()), min_size=1, max_size=3),
        st.booleans(),
    ),
    min_size=1, max_size=8,
)


@settings(max_examples=15)
@given(script=ops)
def test_backends_agree_on_any_script(script: list[Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same commits give the same results, heads and pulls on both backends."""
    tmp = tmp_path_factory.mktemp("eq")

    async def run(storage: Any) -> list[Any]:
        await storage.add_account("alice", KEY)
        lsns = {D1: 0, D2: 0}
        out: list[Any] = []
        for device, edits, retransmit in script:
            changes = []
            for rid, title, base, deleted in edits:
                lsns[device] += 1
                changes.append(Change(lsns[device], base, Record(rid, 0, deleted, Contact(title))))
            out.append(await storage.commit("alice", device, changes))
            if retransmit:
                out.append(await storage.commit("alice", device, changes))
        out.append(await storage.records("alice"))
        out.append(await storage.pull("alice", 1 if out[-1] else 0, 2))
        out.append([(d.device_id, d.durable_lsn) for d in await storage.devices("alice")])
        await storage.aclose()
        return [(r.durable_lsn, r.assigned, r.conflicts) if hasattr(r, "assigned") else r for r in out]

    sim = trio.run(run, SimulatedStorage(random.Random(1)))
    sql = trio.run(run, SqliteStorage(tmp / "s.db", rng=random.Random(1)))
    assert sim == sql


async def test_packed_blobs_hold_less_and_read_back_the_same() -> None:
    storage = SimulatedStorage(random.Random(3), pack_blobs=True)
    plain = SimulatedStorage(random.Random(3))
    pattern = random.Random(4).randbytes(256)
    data = (pattern * 200)[:50_000]          # compressible, like the fleet's synthetic photos
    noise = random.Random(5).randbytes(20_000)  # incompressible: kept as it is
    blob, other = b"\x12" * 16, b"\x13" * 16
    for store_ in (storage, plain):
        await store_.add_account("alice", KEY)
        for bid, content in ((blob, data), (other, noise)):
            for offset in range(0, len(content), 8192):
                await store_.write_blob("alice", bid, offset, len(content), content[offset:offset + 8192])
        assert await store_.write_blob("alice", blob, len(data), len(data), b"") == len(data)
        assert await store_.read_blob("alice", blob) == data
        assert await store_.read_blob("alice", other) == noise
        assert await store_.blob_state("alice", blob) == BlobState(len(data), len(data))
    held = storage._account("alice").blobs
    assert held[blob].packed and len(held[blob].data) < len(data) // 10
    assert not held[other].packed
    storage.crash()
    storage.restore(storage.backup())
    assert await storage.read_blob("alice", blob) == data

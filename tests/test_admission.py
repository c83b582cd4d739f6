"""The bounded places before authentication (server_stub.admission) and the failed-authentication
throttle (server_stub.auth_throttle), as plain state machines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.server_stub.admission import Admission, Holder
from sidekick_testbed.server_stub.auth_throttle import AuthThrottle, Bucket

ADDRESSES = st.sampled_from(["a", "b", "c", "d", None])
OPERATIONS = st.lists(st.tuples(st.sampled_from(["admit", "progress", "release"]), ADDRESSES,
                                st.integers(0, 50)), max_size=120)


@given(OPERATIONS, st.integers(1, 6), st.integers(1, 4))
def test_bounds_hold_and_every_eviction_is_the_right_one(operations: list[tuple[str, str | None, int]],
                                                         total: int, per_address: int) -> None:
    admission = Admission(total, per_address)
    evicted: list[Holder] = []
    holders: list[Holder] = []
    now = 0.0
    for op, address, pick in operations:
        now += 1
        live = [h for h in holders if h.holding]
        if op == "admit":
            counts = {a: sum(1 for h in live if h.address == a) for a in {h.address for h in live}}
            at_own_bound = address is not None and counts.get(address, 0) >= per_address
            full = len(live) >= total
            before = len(evicted)
            cell: list[Holder] = []
            holder = admission.admit(address, now, lambda c=cell: evicted.append(c[0]))
            cell.append(holder)
            holders.append(holder)
            assert holder.holding
            if at_own_bound or full:
                assert len(evicted) == before + 1
                victim = evicted[-1]
                assert victim.evicted and not victim.holding
                group = [h for h in live if h.address == victim.address]
                assert victim.since == min(h.since for h in group)  # the one waiting longest
                if at_own_bound:
                    assert victim.address == address
                else:
                    assert len(group) == max(counts.values())  # from the greediest address
            else:
                assert len(evicted) == before
        elif live:
            target = live[pick % len(live)]
            if op == "progress":
                admission.progress(target, now)
            else:
                admission.release(target)
                admission.release(target)  # twice changes nothing
        live = [h for h in holders if h.holding]
        assert len(admission) == len(live) <= total
        for name in {h.address for h in live}:
            assert admission.held_by(name) == sum(1 for h in live if h.address == name)
            if name is not None:
                assert admission.held_by(name) <= per_address
    assert admission.evictions == len(evicted) == len(set(map(id, evicted)))


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Admission(0, 1)


def test_throttle_numbers() -> None:
    throttle = AuthThrottle(Bucket(5, 12.0), Bucket(30, 2.0))
    for _ in range(5):
        assert not throttle.throttled("alice", "10.0.0.1", 0.0)
        throttle.failed("alice", "10.0.0.1", 0.0)
    assert throttle.throttled("alice", "10.0.0.1", 0.0)
    assert throttle.throttled("alice", "10.0.0.1", 11.9)
    assert not throttle.throttled("alice", "10.0.0.1", 12.0)  # one more try every 12 s
    assert not throttle.throttled("alice", "10.0.0.2", 0.0)
    assert not throttle.throttled("bob", "10.0.0.1", 0.0)
    assert not throttle.throttled("alice", None, 0.0)  # no address (in-process): never throttled
    assert not throttle.throttled("alice", "10.0.0.1", 59.0) and len(throttle) == 1  # (the address's is full)
    assert not throttle.throttled("alice", "10.0.0.1", 60.0)
    assert len(throttle) == 0  # refilled buckets are forgotten


def test_the_throttle_forgets_the_oldest_past_its_size() -> None:
    throttle = AuthThrottle(Bucket(1, 100.0), Bucket(1000, 100.0), max_entries=10)
    for index in range(100):
        throttle.failed(f"user{index}", f"10.0.{index}.1", 0.0)
    assert len(throttle) <= 10
    assert throttle.throttled("user99", "10.0.99.1", 0.0)


@given(st.lists(st.tuples(st.sampled_from(["u", "v"]), st.sampled_from(["1", "2"]), st.floats(0, 30)), max_size=60))
def test_no_more_failures_are_checked_than_the_buckets_allow(attempts: list[tuple[str, str, float]]) -> None:
    """Whatever the timing: for one (account, address), the checked attempts up to time t are at
    most burst + t / refill (the attacker's guesses are bounded)."""
    throttle = AuthThrottle(Bucket(3, 10.0), Bucket(100, 1.0))
    now = 0.0
    checked: dict[tuple[str, str], int] = {}
    for account, address, step in attempts:
        now += step
        if not throttle.throttled(account, address, now):
            throttle.failed(account, address, now)
            checked[account, address] = checked.get((account, address), 0) + 1
            assert checked[account, address] <= 3 + now / 10.0

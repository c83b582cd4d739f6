"""Durations, network mixes, workloads, scenarios and the ledger's bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidekick_testbed.emulator.fleet.durations import DurationError, format_duration, parse_duration
from sidekick_testbed.emulator.fleet.ledger import Ledger
from sidekick_testbed.emulator.fleet.profiles import (
    NETWORKS,
    WORKLOADS,
    NetworkMix,
    ProfileError,
    load_workload,
)
from sidekick_testbed.emulator.fleet.scenario import find_scenario
from sidekick_testbed.protocol.messages import Change
from sidekick_testbed.protocol.records import Note, Record, RecordKind


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("24h", 86400), ("2d", 172800), ("1h30m", 5400), ("250ms", 0.25),
    ("45", 45), (" 2 h ", 7200), (12, 12),
])
def test_durations_parse(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "-5", "1h-2m", "m30", "1.5.2h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10 * 86400))
def test_format_then_parse_gives_the_same_seconds(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.dictionaries(st.sampled_from(sorted(NETWORKS)), st.integers(min_value=1, max_value=100), min_size=1),
       st.integers(min_value=1, max_value=400))
def test_a_mix_deals_profiles_in_proportion_to_their_shares(shares: dict[str, int], count: int) -> None:
    mix = NetworkMix.parse(",".join(f"{name}={share}" for name, share in shares.items()))
    dealt = [mix.assign(i, count).name for i in range(count)]
    total = sum(shares.values())
    for name, share in shares.items():
        assert abs(dealt.count(name) - count * share / total) <= 1


def test_named_mixes_and_profiles_are_documented() -> None:
    mixed = NetworkMix.parse("mixed")
    assert sum(mixed.shares.values()) == pytest.approx(1)
    assert all(profile.source for profile in NETWORKS.values())
    assert NetworkMix.parse("gprs").shares == {"gprs": 1.0}
    assert NETWORKS["gprs"].transfer_time(5000, upstream=True) == pytest.approx(0.4 + 5000 * 8 / 15_000)


def test_network_file_defines_profiles_and_a_mix(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text("[profile.satellite]\ndown_bps = 9600\nup_bps = 2400\nrtt = 1.2\n[mix]\nsatellite = 1\nwifi = 3\n")
    mix = NetworkMix.parse(str(path))
    assert mix.shares == {"satellite": 0.25, "wifi": 0.75}
    assert mix.profiles["satellite"].rtt == 1.2


def test_workloads_by_name_and_from_a_file(tmp_path: Path) -> None:
    assert set(WORKLOADS) == {"light", "typical", "heavy"}
    assert load_workload("light").changes_per_day < load_workload("typical").changes_per_day \
        < load_workload("heavy").changes_per_day
    path = tmp_path / "w.toml"
    path.write_text('per_day = { note = 4, photo = 1 }\nphoto_bytes = 2000\nsync_delay = "5m"\n'
                    'initial = { contact = 7 }\n')
    workload = load_workload(str(path))
    assert workload.name == "w" and workload.per_day == {RecordKind.NOTE: 4.0, RecordKind.PHOTO: 1.0}
    assert (workload.photo_bytes, workload.sync_delay, workload.initial) == (2000, 300, {RecordKind.CONTACT: 7})
    with pytest.raises(ProfileError):
        load_workload("busy")


def test_ready_scenarios_load() -> None:
    outage = find_scenario("2009-outage")
    assert [e.kind for e in outage.events] == ["crash", "outage", "fleet-reboot", "restore"]
    assert outage.backup_times == [3600.0]
    assert outage.events[3].describe() == "18h: restore from the backup of 1h"
    for name in ("bad-day", "silent-rollback"):
        assert find_scenario(name).events


def _record(rid: bytes, text: str, *, deleted: bool = False) -> Record:
    return Record(rid, 1, deleted, Note(text))


def test_ledger_tracks_risk_durability_restores_and_losses() -> None:
    ledger = Ledger(accounts=1)
    a, b = b"a" * 16, b"b" * 16
    ledger.wrote(0, 0, a, "note", Note("a1"), deleted=False, now=10.0)
    ledger.wrote(0, 1, b, "note", Note("b1"), deleted=False, now=20.0)
    assert list(ledger.at_risk) == [(0, a), (0, b)] and ledger.oldest_at_risk(30.0) == 20.0
    ledger.committed(0, [Change(1, 0, _record(a, "a-old"))])           # not the latest content
    assert (0, a) in ledger.at_risk
    ledger.committed(0, [Change(2, 0, _record(a, "a1"))])
    assert list(ledger.at_risk) == [(0, b)]
    # a restore to a backup without a1: a is at risk again; b is in the backup
    ledger.server_now_holds(0, [_record(b, "b1")])
    ledger.reorder()
    assert list(ledger.at_risk) == [(0, a)]
    # handset 0's flash still holds a1 (on or off), handset 1 holds nothing: nothing lost yet
    assert ledger.check_account(0, {0: {(a, Note("a1"))}, 1: set()}, now=50.0) == 0
    # handset 0 came back empty: a1 is gone everywhere
    assert ledger.check_account(0, {0: set(), 1: set()}, now=60.0) == 1
    assert [(loss.at, loss.version.record_id) for loss in ledger.losses] == [(60.0, a)]
    assert not ledger.at_risk
    # a deletion is not data: it ends tracking of the record
    ledger.wrote(0, 1, b, "note", Note("b1"), deleted=True, now=70.0)
    ledger.final_check(0, set(), now=80.0)
    assert len(ledger.losses) == 1

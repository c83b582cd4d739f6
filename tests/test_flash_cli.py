"""``sidekick flash``: format, inspect, fsck, powerloss, and clean errors on bad images."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sidekick_testbed.emulator.cli import main
from sidekick_testbed.emulator.flash import NandFlash, load_image, save_image
from sidekick_testbed.emulator.store import RecordStore
from sidekick_testbed.protocol.records import Note

SMALL = ["--blocks", "16", "--page-size", "512", "--spare-size", "16", "--pages-per-block", "16"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["flash", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_format_inspect_fsck_of_a_fresh_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.img"
    code, out, _ = run(capsys, "format", str(image), *SMALL, "--device-id", "ab" * 16, "--account", "carol")
    assert code == 0 and "formatted" in out
    code, out, _ = run(capsys, "inspect", str(image), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["geometry"]["blocks"] == 16 and info["meta"]["device_id"] == "ab" * 16
    assert info["meta"]["account"] == "carol" and info["at_risk"]["count"] == 0
    code, out, _ = run(capsys, "fsck", str(image))
    assert code == 0 and "clean" in out


def test_default_format_is_a_sparse_64_mib_chip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "big.img"
    assert run(capsys, "format", str(image))[0] == 0
    assert image.stat().st_size < 64 * 1024
    assert load_image(image).geometry.capacity == 64 << 20


def test_inspect_shows_records_by_kind_state_and_what_is_at_risk(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.img"
    run(capsys, "format", str(image), *SMALL)
    flash = load_image(image)
    store = RecordStore.mount(flash)
    first = store.write_local(b"\x01" * 16, Note("one"))
    store.write_local(b"\x02" * 16, Note("two"))
    store.mark_pushed(first.lsn)
    store.mark_durable(4, first.lsn, [])
    store.set_meta(generation=4)
    save_image(flash, image)
    code, out, _ = run(capsys, "inspect", str(image))
    assert code == 0
    assert "note" in out and "1 durable" in out and "1 dirty" in out
    assert "at risk   1 version(s)" in out and (b"\x02" * 16).hex() in out


def test_existing_file_is_not_overwritten_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.img"
    image.write_bytes(b"precious")
    code, _, err = run(capsys, "format", str(image))
    assert code == 2 and "exists" in err and image.read_bytes() == b"precious"
    assert run(capsys, "format", str(image), *SMALL, "--force")[0] == 0


@pytest.mark.parametrize("content", [b"", b"garbage", random.Random(1).randbytes(100_000)])
@pytest.mark.parametrize("command", ["inspect", "fsck"])
def test_corrupt_or_foreign_image_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     content: bytes, command: str) -> None:
    image = tmp_path / "bad.img"
    image.write_bytes(content)
    code, out, err = run(capsys, command, str(image))
    assert code == 2 and out == ""
    assert err.startswith("sidekick: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_missing_image_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "inspect", str(tmp_path / "none.img"))[0] == 2
    assert run(capsys, "format", str(tmp_path / "x.img"), "--page-size", "1000")[0] == 2
    assert run(capsys, "format", str(tmp_path / "x.img"), "--device-id", "zz")[0] == 2
    assert run(capsys, "powerloss", "--id", "nonsense")[0] == 2
    assert run(capsys, "powerloss", "--ops", "0")[0] == 2


def test_fsck_of_an_image_without_a_store_reports_a_finding(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick_testbed.emulator.flash import Geometry

    image = tmp_path / "blank.img"
    save_image(NandFlash(Geometry(page_size=512, spare_size=16, pages_per_block=16, blocks=8)), image)
    code, out, _ = run(capsys, "fsck", str(image))
    assert code == 1 and "not mountable" in out


def test_fsck_finds_a_photo_whose_blob_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick_testbed.protocol.records import Photo

    image = tmp_path / "a.img"
    run(capsys, "format", str(image), *SMALL)
    flash = load_image(image)
    store = RecordStore.mount(flash)
    store.write_local(b"\x05" * 16, Photo("cat", b"\x07" * 16, 10, b"\x00" * 32))
    save_image(flash, image)
    code, out, _ = run(capsys, "fsck", str(image), "--json")
    report = json.loads(out)
    assert code == 1 and not report["clean"] and "blob" in report["findings"][0]


@pytest.mark.parametrize("name", ["powerloss", "power-loss"])
def test_powerloss_sampled_run_prints_a_json_summary(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, name, "--workloads", "1", "--ops", "30", "--samples", "20",
                       "--json", "--no-progress")
    summary = json.loads(out)
    assert code == 0 and summary["cuts"] == 20 and summary["failed"] == 0
    assert sum(summary["by_variant"].values()) == 20


def test_powerloss_reruns_one_cut_by_id(capsys: pytest.CaptureFixture[str]) -> None:
    from sidekick_testbed.emulator.store.powerloss import PowerLossRunner

    k, variant = [cut for cut in PowerLossRunner(n_ops=30).cuts(2) if cut[1] == "torn"][-1]
    code, out, _ = run(capsys, "powerloss", "--ops", "30", "--id", f"2:{k}:{variant}", "--json")
    result = json.loads(out)
    assert code == 0 and result["id"] == f"2:{k}:torn" and result["ok"] and result["kind"] == "program"

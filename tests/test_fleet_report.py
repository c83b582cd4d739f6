"""The HTML report: every plot and table is there, nothing loads from the network, compare works."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from sidekick_testbed.emulator.fleet.config import FleetConfig
from sidekick_testbed.emulator.fleet.engine import run_fleet
from sidekick_testbed.emulator.fleet.profiles import NetworkMix, load_workload
from sidekick_testbed.emulator.fleet.report import PLOTS, render_html, write_report
from sidekick_testbed.emulator.fleet.scenario import find_scenario


class _Page(HTMLParser):
    """Collects what a reader sees: figures with their SVGs, tables, headings, external loads."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, int] = {}
        self.tables = 0
        self.headings: list[str] = []
        self.external: list[str] = []
        self._figure: str | None = None
        self._heading = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "figure":
            self._figure = attributes.get("id") or ""
            self.figures[self._figure] = 0
        elif tag == "svg" and self._figure is not None:
            self.figures[self._figure] += 1
        elif tag == "table":
            self.tables += 1
        elif tag in ("h1", "h2"):
            self._heading = True
        for name in ("src", "href"):
            value = attributes.get(name) or ""
            if value.startswith(("http:", "https:", "//")):
                self.external.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag in ("h1", "h2"):
            self._heading = False

    def handle_data(self, data: str) -> None:
        if self._heading:
            self.headings.append(data.strip())
        self.text.append(data)


@pytest.fixture(scope="module")
def runs() -> dict[str, dict[str, Any]]:
    scenario = find_scenario("bad-day")
    config: dict[str, Any] = {"devices": 5, "workload": load_workload("heavy"), "network": NetworkMix.parse("mixed"),
              "duration": 4 * 3600.0, "scenario": scenario, "seed": 3}
    return {handset: run_fleet(FleetConfig(handset=handset, **config)).report for handset in ("correct", "2009")}


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def test_single_run_page_has_every_plot_and_table(runs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    path = write_report(tmp_path / "r", [("correct handset", runs["correct"])])
    page = _parse(path.read_text(encoding="utf-8"))
    assert set(page.figures) == {f"plot-{name}" for name in PLOTS}
    assert all(count == 1 for count in page.figures.values())          # one inline SVG per figure
    assert page.tables >= 3                                             # run, totals, one per network set
    for heading in ("Run", "Server events", "Totals", "Sync by network", "Plots"):
        assert heading in page.headings
    assert page.external == []
    assert "no user lost any data" in "".join(page.text)
    assert (tmp_path / "r" / "report.json").exists()


def test_compare_page_shows_both_runs_side_by_side(runs: dict[str, dict[str, Any]]) -> None:
    text = render_html([("2009 handset", runs["2009"]), ("correct handset", runs["correct"])])
    page = _parse(text)
    assert set(page.figures) == {f"plot-{name}" for name in PLOTS}
    assert page.external == []
    body = "".join(page.text)
    assert "2009 handset" in body and "correct handset" in body
    assert text.count("<svg") == len(PLOTS)


def test_same_figures_render_the_same_page(runs: dict[str, dict[str, Any]]) -> None:
    assert render_html([("a", runs["correct"])]) == render_html([("a", runs["correct"])])

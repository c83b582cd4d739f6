"""The dependency rule of docs/ARCHITECTURE.md, as import-linter contracts in pyproject.toml.

Every contract must be kept by the import graph of the installed packages (every import counts,
those inside functions and under ``TYPE_CHECKING`` too), and each must break when one import
that the rule forbids is added to that graph, so no contract is kept because it checks nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import grimp
import pytest
from importlinter.api import read_configuration
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.domain.contract import Contract, ContractCheck

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
CONTRACT_TYPES: dict[str, type[Contract]] = {
    "forbidden": ForbiddenContract,
    "acyclic_siblings": AcyclicSiblingsContract,
}
P = "sidekick_testbed."

# One import the rule forbids, per contract: (contract id, importer, imported).
PLANTED = [
    ("protocol-alone", P + "protocol.wire", P + "emulator.store"),
    ("protocol-alone", P + "protocol.session", P + "server_stub.handler"),
    ("protocol-alone", P + "protocol.session", "trio"),
    ("protocol-alone", P + "protocol.auth", "random"),
    ("protocol-alone", P + "protocol.framing", "time"),
    ("server-alone", P + "server_stub.handler", P + "emulator.sim.world"),
    ("server-alone", P + "server_stub.sqlite_storage", P + "emulator.store"),
    ("device-alone", P + "emulator.store.gc", P + "emulator.fleet.engine"),
    ("device-alone", P + "emulator.handset.sync_client", P + "emulator.sim.oracle"),
    ("device-alone", P + "emulator.handset.device", P + "server_stub.server"),
    ("device-alone", P + "emulator.flash.chip", P + "emulator.certify.framework"),
    ("cli-on-top", P + "emulator.certify.pytest_plugin", P + "emulator.cli.certify"),
    ("cli-on-top", P + "server_stub.server", P + "emulator.cli.common"),
    ("testing-for-tests", P + "emulator.sim.world", P + "emulator.testing"),
    ("no-circles", P + "emulator.flash.geometry", P + "emulator.flash.image"),
    ("no-circles", P + "emulator.handset.sync_client", P + "emulator.handset.device"),
    ("no-circles", P + "emulator.handset.device", P + "emulator.sim.world"),
    ("no-circles", P + "server_stub.state", P + "server_stub.handler"),
    ("no-circles", P + "emulator.certify.verdicts", P + "emulator.certify.context"),
    ("no-circles", P + "protocol.records", P + "protocol.session"),
]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return read_configuration(str(PYPROJECT))


@pytest.fixture(scope="module")
def graph(config: dict[str, Any]) -> grimp.ImportGraph:
    options = config["session_options"]
    return grimp.build_graph(*options["root_packages"],
                             include_external_packages=options.get("include_external_packages") == "true"
                             or options.get("include_external_packages") is True,
                             cache_dir=None)


def contracts(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {options["id"]: options for options in config["contracts_options"]}


def check(config: dict[str, Any], contract_id: str, graph: grimp.ImportGraph) -> ContractCheck:
    options = contracts(config)[contract_id]
    contract = CONTRACT_TYPES[options["type"]](
        name=options["name"], session_options=config["session_options"], contract_options=options)
    return contract.check(copy.deepcopy(graph), verbose=False)


def test_the_graph_holds_every_room(graph: grimp.ImportGraph) -> None:
    for room in ("protocol.wire", "server_stub.server", "emulator.store.gc", "emulator.handset.device",
                 "emulator.sim.world", "emulator.fleet.engine", "emulator.certify.framework",
                 "emulator.cli", "emulator.testing"):
        assert P + room in graph.modules


def test_every_contract_is_kept(config: dict[str, Any], graph: grimp.ImportGraph) -> None:
    broken = {}
    for contract_id in contracts(config):
        result = check(config, contract_id, graph)
        if not result.kept:
            broken[contract_id] = result.metadata
    assert not broken, f"broken contracts (run `lint-imports` for the import chains): {broken}"


def test_every_contract_is_planted_against() -> None:
    assert {contract_id for contract_id, _, _ in PLANTED} == set(contracts(read_configuration(str(PYPROJECT))))


@pytest.mark.parametrize(("contract_id", "importer", "imported"), PLANTED)
def test_a_forbidden_import_breaks_its_contract(config: dict[str, Any], graph: grimp.ImportGraph,
                                              contract_id: str, importer: str, imported: str) -> None:
    assert importer in graph.modules
    planted = copy.deepcopy(graph)
    planted.add_import(importer=importer, imported=imported, line_number=1, line_contents="planted")
    assert not check(config, contract_id, planted).kept

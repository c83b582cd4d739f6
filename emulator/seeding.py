"""One root seed for a whole run: the seeds of its components, and Trio's scheduler seeded from it.

The simulation world and the fleet engine both derive every component's seed here (``derive_seed``,
``derive_rng``), so that one derivation gives their traces and JSON. Trio orders the tasks that
became ready together with a private RNG (``trio._core._run._r``), and in its deterministic mode
(``_ALLOW_DETERMINISTIC_SCHEDULING``, the one pytest-trio and Hypothesis use) sorts them by creation
before a seeded shuffle, so the order cannot depend on how they became ready (tasks woken by equal
deadlines come in the order of their cancel scopes' memory addresses). Setting these two is the one
use of Trio's internals in the project, which is why ``pyproject.toml`` pins Trio to
``SUPPORTED_TRIO``, the range it is tested on. Another Trio without them raises ``TrioHookMissing``
instead of running undeterministically.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

__all__ = ["SUPPORTED_TRIO", "TrioHookMissing", "derive_rng", "derive_seed", "seed_trio_scheduler",
           "seeded_trio_scheduler"]

SUPPORTED_TRIO = ">=0.35,<0.36"
"""The Trio versions whose private scheduler RNG the runs seed (the pin in ``pyproject.toml``)."""


class TrioHookMissing(RuntimeError):
    """The installed Trio has no scheduler RNG to seed: same seed, same trace cannot hold."""

    def __init__(self, missing: str) -> None:
        import trio  # noqa: PLC0415

        super().__init__(f"trio {trio.__version__} has no {missing}; deterministic runs need trio{SUPPORTED_TRIO}")
        self.missing = missing


def derive_seed(seed: int, *name: object) -> int:
    """A component's seed: SHA-256 of the root seed and the component's name parts, joined by "/"."""
    text = "/".join(str(part) for part in (seed, *name)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def derive_rng(seed: int, *name: object) -> random.Random:
    """An independent generator for one component, from the root seed and the component's name."""
    return random.Random(derive_seed(seed, *name))


def _trio_run_module() -> ModuleType:
    """Trio's scheduler module, once it is known to hold what ``seed_trio_scheduler`` touches."""
    import trio._core._run as trio_run  # noqa: PLC0415

    for attribute in ("_r", "_ALLOW_DETERMINISTIC_SCHEDULING"):
        if not hasattr(trio_run, attribute):
            raise TrioHookMissing(f"trio._core._run.{attribute}")
    return trio_run


def seed_trio_scheduler(value: int) -> None:
    """Seed Trio's tie-breaking RNG (which of several ready tasks runs first), so that one seed gives
    one schedule. Raises ``TrioHookMissing`` on a Trio without it."""
    _trio_run_module()._r.seed(value)


_ONE_SEEDED_RUN = threading.Lock()
"""Trio's RNG is one per process: two seeded runs at once in threads (a Dask worker with
``--nthreads 2``) would draw from it in turn and neither would be its seed's run."""


@contextmanager
def seeded_trio_scheduler(value: int) -> Iterator[None]:
    """``seed_trio_scheduler`` for one run, in Trio's deterministic mode (each batch of ready tasks
    sorted by creation, then shuffled by the seeded RNG): the same schedule in a fresh process, in a
    long-lived Dask worker whose memory is laid out otherwise, and under pytest-trio. Seeded runs in
    other threads of this process wait for this one to end."""
    trio_run = _trio_run_module()
    with _ONE_SEEDED_RUN:
        saved = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True
        seed_trio_scheduler(value)
        try:
            yield
        finally:
            trio_run._ALLOW_DETERMINISTIC_SCHEDULING = saved

"""A flash chip whose power cuts are aimed at writes: the Nth program or erase from now.

``NandFlash.arm_power_cut`` counts every operation, reads included, and reads dominate; a cut
aimed at a coming program or erase is where torn pages and half-erased blocks come from. Besides
the chip's own variants (``clean``, ``torn``: random bits of the page programmed) a cut can be
``prefix``: the program stopped part-way, the page's first bytes programmed and the rest still
erased (a controller writing a page sector by sector), which leaves a well-formed page header
over a partial payload: only a checksum tells it from a whole page.
"""

from __future__ import annotations

import random

from sidekick_testbed.emulator.flash import NandFlash, PowerLoss

__all__ = ["SimFlash"]


class SimFlash(NandFlash):
    """``NandFlash`` plus ``cut_at_write(n, variant)``: power fails during the nth coming write."""

    writes = 0
    _write_cut: int | None = None
    _write_variant = "torn"
    _cut_rate = 0.0
    _cut_rng: random.Random | None = None
    erases = 0
    _erase_cut: int | None = None
    _erase_variant = "torn"
    cuts: list[tuple[int, str, int, int, str]] = []
    """Power cuts that hit this chip: (operation number, kind, block, page or -1, variant)."""

    def set_cut_rate(self, rate: float, rng: random.Random) -> None:
        """Besides aimed cuts, each program or erase loses power with probability ``rate``
        (drawn from ``rng``; the variant as well): a flaky battery."""
        self._cut_rate = rate
        self._cut_rng = rng

    def cut_at_write(self, n: int, variant: str = "torn") -> None:
        """Cut the power during the ``n``-th program or erase from now (1 = the next one)."""
        if n < 1:
            raise ValueError("n must be at least 1")
        self._write_cut = self.writes + n
        self._write_variant = variant if variant != "prefix" else "prefix"

    def cut_after_erase(self, n: int, variant: str = "torn") -> None:
        """Cut the power during the first program after the ``n``-th erase from now: a brown-out
        after the long, power-hungry erase, between the erase and the writes that follow it."""
        if n < 1:
            raise ValueError("n must be at least 1")
        self._erase_cut = self.erases + n
        self._erase_variant = variant

    def cancel_cut(self) -> None:
        """Forget pending cuts and stop flaky ones (and any cut armed on the chip)."""
        self._write_cut = None
        self._erase_cut = None
        self._cut_rate = 0.0
        self.disarm_power_cut()

    @property
    def cut_pending(self) -> bool:
        """True while a write-aimed cut waits."""
        return self._write_cut is not None or self._erase_cut is not None

    def _count_write(self) -> None:
        self.writes += 1
        if self.writes == self._write_cut:
            self._write_cut = None
            self.arm_power_cut(self.ops + 1, "torn" if self._write_variant == "prefix" else self._write_variant)

    def _maybe_flaky(self) -> None:
        rng = self._cut_rng
        if self._cut_rate and rng is not None and self._write_cut is None and rng.random() < self._cut_rate:
            roll = rng.random()
            self.cut_at_write(1, "torn" if roll < 0.5 else "prefix" if roll < 0.8 else "clean")

    def program_page(self, block: int, page: int, data: bytes, spare: bytes = b"") -> None:
        """Program, with the write-aimed cut."""
        self._maybe_flaky()
        if self._write_variant == "prefix" and self.writes + 1 == self._write_cut:
            self.writes += 1
            self._write_cut = None
            kept = self.rng.randrange(1, max(2, len(data)))
            super().program_page(block, page, data[:kept], spare)
            loss = PowerLoss(self.ops, "program", "prefix")
            self._note_cut(loss, block, page)
            raise loss
        self._count_write()
        try:
            super().program_page(block, page, data, spare)
        except PowerLoss as exc:
            self._note_cut(exc, block, page)
            raise

    def erase_block(self, block: int) -> None:
        """Erase, with the write-aimed cut."""
        self._maybe_flaky()
        self._count_write()
        try:
            super().erase_block(block)
        except PowerLoss as exc:
            self._note_cut(exc, block, -1)
            raise
        self.erases += 1
        if self.erases == self._erase_cut:
            self._erase_cut = None
            if self._write_cut is None:
                self.cut_at_write(1, self._erase_variant)

    def _note_cut(self, exc: PowerLoss, block: int, page: int) -> None:
        self.cuts = [*self.cuts[-15:], (exc.op, exc.kind, block, page, exc.variant)]

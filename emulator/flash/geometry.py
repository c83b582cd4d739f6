"""The geometry of a NAND chip (page, spare and block sizes, NOP, endurance, ECC strength)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_BLOCKS", "SECTOR", "Geometry"]

SECTOR = 512
MAX_BLOCKS = 1 << 20
"""The most erase blocks a chip may have."""


@dataclass(frozen=True, slots=True)
class Geometry:
    """Chip geometry; the default is a 64 MiB SLC part (2 KiB + 64 B pages, 128 KiB blocks)."""

    page_size: int = 2048
    spare_size: int = 64
    pages_per_block: int = 64
    blocks: int = 512
    nop: int = 4
    endurance: int = 100_000
    ecc_bits_per_512: int = 1

    def __post_init__(self) -> None:
        if not 512 <= self.page_size <= 65536 or self.page_size % SECTOR:
            raise ValueError(f"page_size must be a multiple of 512 in 512..65536, not {self.page_size}")
        if not 1 <= self.spare_size <= 4096:
            raise ValueError(f"spare_size must be in 1..4096, not {self.spare_size}")
        if not 2 <= self.pages_per_block <= 4096:
            raise ValueError(f"pages_per_block must be in 2..4096, not {self.pages_per_block}")
        if not 4 <= self.blocks <= MAX_BLOCKS:
            raise ValueError(f"blocks must be in 4..{MAX_BLOCKS}, not {self.blocks}")
        if not 1 <= self.nop <= 255 or self.endurance < 1 or not 0 <= self.ecc_bits_per_512 <= 64:
            raise ValueError("nop must be in 1..255, endurance >= 1, ecc_bits_per_512 in 0..64")

    @property
    def raw_page(self) -> int:
        """Bytes per page including the spare area."""
        return self.page_size + self.spare_size

    @property
    def pages(self) -> int:
        """Pages on the chip."""
        return self.blocks * self.pages_per_block

    @property
    def capacity(self) -> int:
        """Data bytes on the chip (spare areas excluded)."""
        return self.pages * self.page_size

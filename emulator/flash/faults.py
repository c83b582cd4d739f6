"""What goes wrong with a NAND chip: the fault switches (``FlashFaults``), the power-cut variants,
and the errors a chip raises (``FlashError`` and its kinds, ``PowerLoss`` among them)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BadBlockError",
    "CUT_VARIANTS",
    "EraseError",
    "FlashError",
    "FlashFaults",
    "NopExceeded",
    "PowerLoss",
    "ProgramError",
    "ProgramOrderError",
    "UncorrectableError",
    "UsageError",
]

CUT_VARIANTS: tuple[str, ...] = ("clean", "torn")


class FlashError(Exception):
    """Base of every flash error."""


class PowerLoss(FlashError):
    """Power was cut during an operation; the chip keeps what it had (plus the torn op)."""

    def __init__(self, op: int, kind: str, variant: str) -> None:
        super().__init__(f"power lost at operation {op} ({kind}, {variant})")
        self.op = op
        self.kind = kind
        self.variant = variant


class UncorrectableError(FlashError):
    """A read found more flipped bits in a sector than the ECC corrects."""


class BadBlockError(FlashError):
    """Program or erase of a block that is marked bad."""


class ProgramError(FlashError):
    """The chip reported a program failure; the block is now bad (grown bad block)."""


class EraseError(FlashError):
    """The chip reported an erase failure; the block is now bad (grown bad block or worn out)."""


class UsageError(FlashError):
    """Illegal use of the chip: address out of range, wrong data length."""


class ProgramOrderError(UsageError):
    """First program of a page below a page already programmed in the same block."""


class NopExceeded(UsageError):
    """More partial programs of one page than the part allows (NOP) between erases."""


@dataclass(frozen=True, slots=True)
class FlashFaults:
    """Fault switches; all off by default. Rates are probabilities drawn from the chip's RNG."""

    factory_bad_rate: float = 0.0
    """Fraction of blocks marked bad at manufacture (spare byte 0 of page 0 != 0xFF)."""
    read_flip_rate: float = 0.0
    """Per sector read: probability of bit flips within the ECC limit (corrected, counted)."""
    read_uncorrectable_rate: float = 0.0
    """Per sector read: probability of one flip more than the ECC corrects."""
    program_fail_rate: float = 0.0
    """Per program: probability the chip reports failure (the block grows bad)."""
    erase_fail_rate: float = 0.0
    """Per erase: probability the chip reports failure (the block grows bad)."""
    wear_out: bool = True
    """Past ``endurance`` erase cycles an erase fails with probability ``wear_fail_rate``."""
    wear_fail_rate: float = 0.5

    @classmethod
    def realistic(cls) -> FlashFaults:
        """Rates in the spirit of a 2009 SLC part: 2% factory bad blocks, rare read disturb."""
        return cls(factory_bad_rate=0.02, read_flip_rate=1e-4, read_uncorrectable_rate=1e-7,
                   program_fail_rate=1e-6, erase_fail_rate=1e-5)


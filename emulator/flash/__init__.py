"""The handset's NAND flash: the chip model and its image file.

``geometry`` (the part's sizes), ``faults`` (fault switches and the chip's errors), ``chip``
(``NandFlash``: program/erase rules, ECC, bad blocks, wear, power loss) and ``image`` (the image
file, ``save_image``/``load_image``); each imports only the ones before it. This module re-exports
their public names.
"""

from sidekick_testbed.emulator.flash.chip import FlashSnapshot, FlashStats, NandFlash
from sidekick_testbed.emulator.flash.faults import (
    CUT_VARIANTS,
    BadBlockError,
    EraseError,
    FlashError,
    FlashFaults,
    NopExceeded,
    PowerLoss,
    ProgramError,
    ProgramOrderError,
    UncorrectableError,
    UsageError,
)
from sidekick_testbed.emulator.flash.geometry import MAX_BLOCKS, Geometry
from sidekick_testbed.emulator.flash.image import (
    IMAGE_MAGIC,
    IMAGE_VERSION,
    ImageError,
    load_image,
    save_image,
)

__all__ = [
    "BadBlockError",
    "CUT_VARIANTS",
    "EraseError",
    "FlashError",
    "FlashFaults",
    "FlashSnapshot",
    "FlashStats",
    "Geometry",
    "IMAGE_MAGIC",
    "IMAGE_VERSION",
    "ImageError",
    "MAX_BLOCKS",
    "NandFlash",
    "NopExceeded",
    "PowerLoss",
    "ProgramError",
    "ProgramOrderError",
    "UncorrectableError",
    "UsageError",
    "load_image",
    "save_image",
]

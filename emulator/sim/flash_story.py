"""The flash operations behind a store-internal failure, in words, for the story of a violation.

The oracle's reader says which pages of a chip are not valid store pages and where each record's
head lies; the chip's operation log (``NandFlash.op_log``: the last operations, numbered) and the
power cuts that hit it (``SimFlash.cuts``) say what last touched those pages. ``explain`` puts
them together: "page 3:1 fails its checksum: torn by the power cut during program at flash op
812", "record 1a2b3c4d's head was on page 2:1; block 2 was erased at flash op 840 and no newer
copy was committed".
"""

from __future__ import annotations

from sidekick_testbed.emulator.flash import NandFlash
from sidekick_testbed.emulator.sim.flash_reader import ChipView

__all__ = ["explain"]


def _last_op(flash: NandFlash, block: int, page: int | None) -> tuple[int, str, int, int] | None:
    """The last logged operation that wrote ``block`` (its ``page``, or any page if None, or an erase)."""
    for op in reversed(flash.op_log):
        number, kind, op_block, op_page = op
        if op_block != block or kind == "read":
            continue
        if kind == "erase" or page is None or op_page == page:
            return op
    return None


def _cut(flash: NandFlash, number: int) -> str | None:
    for op, kind, _block, _page, variant in getattr(flash, "cuts", ()):
        if op == number:
            return f"the power cut during {kind} ({variant})"
    return None


def _describe(flash: NandFlash, op: tuple[int, str, int, int]) -> str:
    number, kind, block, page = op
    where = f"block {block}" if kind == "erase" else f"{block}:{page}"
    cut = _cut(flash, number)
    return f"{kind} of {where} at flash op {number}" + (f", cut by {cut}" if cut else "")


def explain(flash: NandFlash, view: ChipView, before: ChipView | None = None,
            record_id: bytes | None = None, blob_id: bytes | None = None,
            pages: tuple[int, ...] = ()) -> list[str]:
    """Sentences naming the flash operations behind what ``view`` shows (and, for ``record_id`` or
    ``blob_id``, behind its disappearance since ``before``; for ``pages``, what last wrote them)."""
    ppb = flash.geometry.pages_per_block
    lines: list[str] = []
    for index in pages:
        block, page = divmod(index, ppb)
        if not 0 <= block < flash.geometry.blocks:
            continue
        op = _last_op(flash, block, page)
        state = "erased" if flash.is_erased(block, page) else "programmed"
        what = _describe(flash, op) if op is not None else "before the operation log"
        lines.append(f"page {block}:{page} (index {index}) is {state} now; last write there: {what}")
    if record_id is not None and before is not None and record_id in before.heads:
        head = before.heads[record_id]
        block, page = divmod(head.page, ppb)
        now = view.heads.get(record_id)
        moved = "" if now is None else f" (now on {now.page // ppb}:{now.page % ppb}, seq {now.seq})"
        op = _last_op(flash, block, page)
        what = _describe(flash, op) if op is not None else "no logged operation"
        lines.append(f"record {record_id.hex()[:8]}'s head was on page {block}:{page} (seq {head.seq}) at the "
                     f"last check{moved}; last write there: {what}")
    if blob_id is not None and before is not None and blob_id in before.blob_pages:
        for index in before.blob_pages[blob_id]:
            block, page = divmod(index, ppb)
            op = _last_op(flash, block, page)
            if op is not None:
                lines.append(f"blob {blob_id.hex()[:8]} had a page on {block}:{page}; last write there: "
                             f"{_describe(flash, op)}")
                break
    for index, why in view.invalid[:4]:
        block, page = divmod(index, ppb)
        op = _last_op(flash, block, page)
        what = _describe(flash, op) if op is not None else "before the operation log"
        lines.append(f"page {block}:{page} is not a valid store page ({why}): last written by {what}")
    if not view.mountable:
        lines.append(f"the chip would not mount: {view.problem}")
    return lines

"""How a simulated run notices an exception nobody typed: the server's logged errors
(``LogCatcher``), and where an exception that no part handled was raised."""

from __future__ import annotations

import logging

__all__ = ["LogCatcher", "innermost", "where_raised"]


class LogCatcher(logging.Handler):
    """Collects error records of the server (a logged exception is an untyped exception)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR and record.name.startswith("sidekick"):
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                text += f": {type(exc).__name__}: {exc}"
            self.errors.append(text)


def innermost(exc: BaseException) -> BaseException:
    """The first leaf exception of ``exc`` (through nested exception groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def where_raised(exc: BaseException) -> str:
    """``file:line function`` of the innermost frame of ``exc``'s traceback (``?`` without one)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return "?"
    code = last.tb_frame.f_code
    return f"{code.co_filename.rsplit('/', 1)[-1]}:{last.tb_lineno} {code.co_name}"

"""A Hypothesis example database shared between processes and machines (CI shards).

``example_database(where)``: ``redis://HOST:PORT/N`` (also ``rediss://``, ``unix://``) gives
``hypothesis.extra.redis.RedisExampleDatabase`` on that Redis (the ``redis`` package: ``pip install
'sidekick-testbed[redis]'``); anything else is a directory
(``DirectoryBasedExampleDatabase``). A failure one process finds is saved there, and every
process that runs the same test replays it first.

This module is also a pytest plugin (an entry point of the package, so any pytest run where the
package is installed has it): ``pytest --example-db redis://ci-redis:6379/0`` puts that database
under the Hypothesis profile already loaded (the project's ``ci`` or ``thorough``, or your own).
Redis is reached when pytest starts: an address without a Redis is a usage error, not a run that
silently shares nothing. Hypothesis is imported only then: the plugin costs nothing to a pytest
run that does not use it. docs/FUZZING.md shows the CI recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypothesis.database import ExampleDatabase

try:
    import pytest

    _last: Any = pytest.hookimpl(trylast=True)  # after the profile is chosen (--hypothesis-profile too)
except ImportError:  # pragma: no cover - used without pytest: the hooks are never called
    def _last(hook: Any) -> Any:
        return hook

__all__ = ["REDIS_SCHEMES", "example_database", "pytest_addoption", "pytest_configure"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_PROFILE = "sidekick-example-db"


def example_database(where: str, *, check: bool = True) -> ExampleDatabase:
    """The database at ``where`` (a Redis URL or a directory). ``check``: ping Redis now;
    ValueError with the reason if it cannot be reached or the package is missing."""
    from hypothesis.database import DirectoryBasedExampleDatabase

    if not where.startswith(REDIS_SCHEMES):
        return DirectoryBasedExampleDatabase(Path(where))
    try:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase
    except ImportError:
        raise ValueError(f"{where}: a Redis example database needs the redis package "
                         "(pip install 'sidekick-testbed[redis]')") from None
    try:
        client = redis.Redis.from_url(where, socket_connect_timeout=5)
        if check:
            client.ping()
    except (redis.RedisError, ValueError) as exc:
        raise ValueError(f"{where}: cannot use this Redis ({exc})") from None
    return RedisExampleDatabase(client)


def pytest_addoption(parser: Any) -> None:
    """``--example-db URL|DIR``."""
    parser.getgroup("hypothesis").addoption(
        "--example-db", metavar="URL|DIR", default=None,
        help="Hypothesis example database shared between runs and machines: redis://HOST:PORT/N or a "
             "directory; failures saved there are replayed first (sidekick-testbed)")


@_last
def pytest_configure(config: Any) -> None:
    """Put the ``--example-db`` database under the loaded Hypothesis profile."""
    where = config.getoption("example_db", default=None)
    if not where:
        return
    try:
        database = example_database(where)
    except ValueError as exc:
        raise pytest.UsageError(f"--example-db {exc}") from None
    from hypothesis import settings

    settings.register_profile(_PROFILE, settings.default, database=database)
    settings.load_profile(_PROFILE)

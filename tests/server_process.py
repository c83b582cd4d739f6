"""``sidekick serve`` as a separate process for tests: started, waited for, stopped."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def serve_process(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                  stop: signal.Signals = signal.SIGTERM) -> Iterator[dict[str, int]]:
    """Run ``argv`` (a ``sidekick serve`` command line) until the block ends; yields the ports it
    reports listening on ({"tcp": ..., "http": ..., "admin": ...}). Its stderr is read all along
    (a full pipe would stop the server)."""
    process = subprocess.Popen(list(argv), cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    ready = threading.Event()
    lines: list[str] = []

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if "serving" in line:
                ready.set()
        ready.set()  # the process ended

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "the server did not start within 60 s"
        serving = next((line for line in lines if "serving" in line), None)
        assert serving is not None, "the server exited: " + "".join(lines[-5:])
        yield {name: int(port) for name, port in re.findall(r"(tcp|http|admin)=\('[^']*', (\d+)\)", serving)}
    finally:
        process.send_signal(stop)
        process.wait(timeout=60)
        reader.join(timeout=60)

"""Two processes that reach the same step at the same moment, for once-per-machine locks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_BARRIER = (
    "import pathlib, sys, time\n"
    "barrier = pathlib.Path(sys.argv[2])\n"
    "(barrier / sys.argv[3]).touch()\n"
    "deadline = time.monotonic() + 120\n"
    "while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:\n"
    "    time.sleep(0.01)\n"
)


def run_together(
    setup: str, step: str, argument: str, folder: Path, environment: dict[str, str]
) -> list[tuple[str, str]]:
    """Run ``setup`` in two Python processes (``sys.argv[1]`` is ``argument``), wait at a
    file barrier in ``folder`` until both are ready, then run ``step``; (stdout, stderr)
    of each, after checking that both exited 0. INFO logs go to stderr."""
    script = (
        "import logging\nlogging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        + setup
        + _BARRIER
        + step
    )
    barrier = folder / "barrier"
    barrier.mkdir()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, argument, str(barrier), name],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    return outputs

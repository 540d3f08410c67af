"""What a replica prints: its warnings reach the user once, readable and attributed.

Ray forwards whatever a worker writes to the driver's terminal, prefixed
``(Replica pid=...)`` in ANSI colours and at whatever moment it arrives (after
the run's summary, too). Model libraries write progress bars and info logs there.
So a replica keeps its own output: progress bars are switched off before the
libraries load (and any that still draw are dropped), library loggers stay at
WARNING, and what is written to ``sys.stderr`` is kept as *notes* (ANSI codes
stripped) that travel back with ``ready()`` and each batch's result. The driver
logs each distinct note once, naming the replicas it came from
(:class:`NoteRelay`). Output below Python (a C library writing to the file
descriptor) still goes Ray's way.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("embedfleet.fleet")

#: Set in a replica before the model libraries are imported: no progress bars.
QUIET_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
#: Loggers kept at WARNING in a replica (their INFO lines are not for the user).
LIBRARY_LOGGERS = ("sentence_transformers", "transformers", "huggingface_hub", "embedfleet")
ANSI_CODE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


class StderrNotes(io.TextIOBase):
    """A ``sys.stderr`` that keeps what is written as notes: one per write that ends a
    line (a logging record, a warning, a print), without ANSI codes; a progress bar
    (redrawn with carriage returns) is dropped."""

    def __init__(self, original: object) -> None:
        super().__init__()
        self._original = original
        self._partial = ""
        self._notes: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            if not self._partial.endswith("\n"):
                return len(text)
            note, self._partial = self._partial, ""
        note = ANSI_CODE.sub("", note).strip()
        if note and "\r" not in note:
            with self._lock:
                self._notes.append(note)
        return len(text)

    def drain(self) -> list[str]:
        with self._lock:
            notes, self._notes = self._notes, []
        return notes

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # C-level writers (faulthandler) use the real descriptor
        return self._original.fileno()  # type: ignore[attr-defined,no-any-return]

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


@contextmanager
def libraries_quiet() -> Iterator[None]:
    """In the driver, while a job loads its model in this process (no replica to keep
    its output): the model libraries' progress bars off and their loggers at WARNING,
    each restored afterwards, so a notebook's own later use of them is unchanged."""
    try:
        import huggingface_hub.utils as hub
    except ImportError:  # no local model library: nothing draws
        hub = None
    bars = hub is not None and not hub.are_progress_bars_disabled()
    if bars:
        hub.disable_progress_bars()  # transformers reads it when it is imported
    levels = {  # embedfleet's own logger stays as the driver set it
        name: logging.getLogger(name).level for name in LIBRARY_LOGGERS if name != "embedfleet"
    }
    for name in levels:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if bars:
            hub.enable_progress_bars()
            transformers_logging = sys.modules.get("transformers.utils.logging")
            if transformers_logging is not None:
                transformers_logging.enable_progress_bar()


def keep_replica_output() -> StderrNotes:
    """In a replica's process: quiet the libraries and keep what reaches ``sys.stderr``."""
    for variable, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(variable, value)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:  # imported already: its bars read the variable at import
        hub.disable_progress_bars()
    if isinstance(sys.stderr, StderrNotes):
        return sys.stderr
    original = sys.stderr
    notes = StderrNotes(original)
    sys.stderr = notes
    for handler in logging.getLogger().handlers:  # a handler made before: the new stream
        if isinstance(handler, logging.StreamHandler) and handler.stream in (
            original,
            sys.__stderr__,
        ):
            handler.setStream(notes)
    return notes


class NoteRelay:
    """The driver's side: each distinct note of a fleet is logged once, at WARNING,
    with the replicas it came from."""

    def __init__(self, fleet_name: str) -> None:
        self.fleet_name = fleet_name
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def relay(self, notes_by_replica: dict[int, list[str]]) -> None:
        # Two replicas' copies of one warning may list its lines in another order (a
        # table built from a set): the same lines are the same note.
        first: dict[tuple[str, ...], str] = {}
        sources: dict[tuple[str, ...], list[int]] = {}
        for replica, notes in sorted(notes_by_replica.items()):
            for note in notes:
                key = tuple(sorted(note.splitlines()))
                first.setdefault(key, note)
                sources.setdefault(key, []).append(replica)
        for key, replicas in sources.items():
            with self._lock:
                if key in self._seen:
                    continue
                self._seen.add(key)
            note = first[key]
            which = ", ".join(str(replica) for replica in replicas)
            label = "replica" if len(replicas) == 1 else "replicas"
            logger.warning("fleet %r %s %s: %s", self.fleet_name, label, which, note)

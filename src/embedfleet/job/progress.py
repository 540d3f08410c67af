"""The run's progress bar: rows/s and the ETA from tqdm, tokens/s from the shards'
counted tokens. Shards finish out of order and sizes vary, so it advances by rows
per committed shard, not by shards; a failed shard advances by its estimate. The
driver moves it once per pass over finished shards (``schedule.py``), and its
numbers beside the bar at most every ``POSTFIX_SECONDS``: thousands of small shards
cost the driver no more than a few large ones."""

from __future__ import annotations

import time
from typing import Any

from embedfleet.job.result import JobResult

POSTFIX_SECONDS = 0.5


class ShardProgress:
    """A tqdm bar over the rows left to embed; does nothing when not ``enabled``."""

    def __init__(self, total_rows: int, enabled: bool) -> None:
        self.bar: Any = None
        self.shown = 0.0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_rows, unit="rows", unit_scale=True, dynamic_ncols=True, desc="embedding"
            )

    def advance(self, rows: int, result: JobResult, shards_done: int, shards: int) -> None:
        if self.bar is None:
            return
        self.bar.update(rows)
        now = time.monotonic()
        if now - self.shown < POSTFIX_SECONDS and shards_done < shards:
            return
        self.shown = now
        elapsed = max(self.bar.format_dict["elapsed"], 1e-9)
        self.bar.set_postfix(
            tokens_per_s=f"{result.tokens / elapsed:.0f}",
            shards=f"{shards_done}/{shards}",
            failed=len(result.failed_shards),
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""Joining a Ray cluster, or starting the local instance a fleet or a job runs on.

The local instance embedfleet starts keeps Ray's token authentication on (it
listens on the machine's address, not only on loopback), but Ray announces that
default with a warning that reads like an alarm ("Token authentication is enabled
for this Ray cluster ... Set RAY_AUTH_MODE=disabled"). For the instance embedfleet
starts itself, that one notice is dropped at its source logger while ``ray.init``
runs; every other warning, and the notice when a user starts Ray, is left alone.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from embedfleet.fleet.replica import require_ray

#: The logger and the opening words of Ray's notice that token auth is on by default.
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
AUTH_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropAuthNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(AUTH_NOTICE)


def ensure_ray(address: str | None = None) -> bool:
    """Ray initialised in this process: joins ``address`` (or ``RAY_ADDRESS``), else
    starts a local instance. True when this call started or joined it."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    local = address is None and not os.environ.get("RAY_ADDRESS")
    notice = logging.getLogger(AUTH_NOTICE_LOGGER)
    quiet = _DropAuthNotice()
    if local:
        notice.addFilter(quiet)
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    finally:
        notice.removeFilter(quiet)
    return True


def cluster_can_grow(ray: Any) -> bool:
    """False where this process started its Ray instance itself (``ray.init()`` without
    an address: one machine, no autoscaler, so what is not free now never will be unless
    something here lets it go); True where it joined a cluster, which may autoscale."""
    try:
        node = ray._private.worker._global_node
    except AttributeError:  # another Ray version: assume it can grow, wait as before
        return True
    return not bool(getattr(node, "head", False))

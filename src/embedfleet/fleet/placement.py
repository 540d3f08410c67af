"""What a fleet asks Ray for, and a clear answer when Ray cannot give it.

Ray waits forever for resources it does not have. A fleet on a cluster that may
grow (an autoscaler adding nodes) waits up to ``start_timeout`` and then says what
it asked for and what the cluster has. A fleet on an instance that cannot grow (the
local one this process started) does not wait: when the free resources do not
cover it, it fails at once, naming the live fleets of this process and what they
hold, since they are usually what is in the way (two notebook cells, each with a
2-replica CPU fleet, on a 2-core machine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embedfleet.errors import FleetStartError

#: A fleet that just replaced one (a re-run cell) waits this long for Ray to report
#: the old fleet's resources free; any other fleet checks for about half a second.
RELEASE_WAIT_SECONDS = 10.0
CHECK_SECONDS = 0.5
_EPSILON = 1e-9


@dataclass(frozen=True)
class Reservation:
    """What each replica of a fleet reserves, and how many replicas there are."""

    replicas: int
    num_cpus: float
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)

    def per_replica(self) -> dict[str, float]:
        asked = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {name: amount for name, amount in asked.items() if amount > 0}

    def total(self) -> dict[str, float]:
        return {name: amount * self.replicas for name, amount in self.per_replica().items()}

    def describe(self) -> str:
        """'2 replicas x num_cpus=1, num_gpus=0'."""
        each = [f"num_cpus={self.num_cpus:g}", f"num_gpus={self.num_gpus:g}"]
        each += [f"{name}={amount:g}" for name, amount in self.resources.items()]
        plural = "s" if self.replicas != 1 else ""
        return f"{self.replicas} replica{plural} x {', '.join(each)}"


def shortfall(asked: dict[str, float], free: dict[str, float]) -> dict[str, float]:
    """The resources ``asked`` needs beyond what is ``free``: name -> amount missing."""
    return {
        name: amount - free.get(name, 0.0)
        for name, amount in asked.items()
        if amount > free.get(name, 0.0) + _EPSILON
    }


def wait_for_room(ray: Any, reservation: Reservation, *, wait: float) -> dict[str, float]:
    """Poll the free resources for up to ``wait`` seconds (released actors take a moment
    to show as free); the shortfall left at the end, empty when the fleet fits."""
    deadline = time.monotonic() + wait
    while True:
        missing = shortfall(reservation.total(), ray.available_resources())
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(0.1)


def refuse_without_room(
    ray: Any,
    fleet: Any,
    holders: Callable[[], list[tuple[str, Reservation]]],
    replaced: bool,
    start_timeout: float,
) -> None:
    """Raise :class:`FleetStartError` when ``fleet`` (its ``reservation`` and ``label``)
    does not fit in the free resources, after waiting briefly for them to show up (long
    enough for a fleet it just ``replaced`` to show its resources free)."""
    wait = RELEASE_WAIT_SECONDS if replaced else CHECK_SECONDS
    if wait_for_room(ray, fleet.reservation, wait=min(wait, start_timeout)):
        raise FleetStartError(unplaceable_message(fleet.label, fleet.reservation, ray, holders()))


def unplaceable_message(
    label: str, reservation: Reservation, ray: Any, holders: list[tuple[str, Reservation]]
) -> str:
    """Why a fleet cannot start on an instance that cannot grow, and what holds the rest."""
    total, free = ray.cluster_resources(), ray.available_resources()
    asked = reservation.total()
    missing = shortfall(asked, free) or asked
    asks = "; ".join(
        f"it asks for {name}={asked[name]:g}, the cluster has {total.get(name, 0):g} "
        f"(free {free.get(name, 0):g})"
        for name in missing
    )
    shown = ["CPU", "GPU", *(name for name in asked if name not in ("CPU", "GPU"))]
    has = ", ".join(f"{name} {total.get(name, 0):g} (free {free.get(name, 0):g})" for name in shown)
    if shortfall(asked, total):
        blame = "That is more than it has in all"
    elif holders:
        held = "; ".join(f"{other} holds {kept.describe()}" for other, kept in holders)
        blame = f"Live fleets of this process: {held}. Shut one down (fleet.shutdown())"
    else:
        blame = "No live fleet of this process holds what is missing (other actors or tasks do)"
    return (
        f"fleet {label} cannot be placed: {reservation.describe()}; {asks}. This Ray "
        f"instance was started by this process, so it cannot grow: it has {has}. {blame}; "
        "or ask for fewer replicas or smaller num_cpus / num_gpus."
    )


def timeout_message(
    name: str, reservation: Reservation, ray: Any, missing: int, wait: float
) -> str:
    """Replicas not placed within ``start_timeout``: what was asked, what the cluster has."""
    total, free = ray.cluster_resources(), ray.available_resources()
    return (
        f"{missing} of {reservation.replicas} replicas of {name!r} could not be placed "
        f"within {wait:g}s: each asks for num_cpus={reservation.num_cpus:g}, "
        f"num_gpus={reservation.num_gpus:g}; the cluster has CPU {total.get('CPU', 0):g} "
        f"(free {free.get('CPU', 0):g}), GPU {total.get('GPU', 0):g} "
        f"(free {free.get('GPU', 0):g})"
        + "".join(
            f"; it asks for {resource}={amount:g}, the cluster has {total.get(resource, 0):g} "
            f"(free {free.get(resource, 0):g})"
            for resource, amount in reservation.resources.items()
        )
    )

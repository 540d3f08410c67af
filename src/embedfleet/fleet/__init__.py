"""``remote(ef)``: the same embedding function as a pool of Ray actors.

``remote_function.py`` holds the fleet (start, dispatch, stop), ``replica.py`` the actor
and how it rebuilds the function, ``live_fleets.py`` the fleets a process holds.
"""

from embedfleet.fleet.remote_function import FLEET_BATCH_SIZE, RemoteEmbeddingFunction, remote
from embedfleet.fleet.replica import FunctionSpec, Replica

__all__ = ["FLEET_BATCH_SIZE", "FunctionSpec", "RemoteEmbeddingFunction", "Replica", "remote"]

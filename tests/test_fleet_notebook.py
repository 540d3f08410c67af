"""A fleet inside a real Jupyter kernel: re-running the cell that creates it
neither leaks actors nor waits for the CPUs the previous fleet held."""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

SETUP = """
import ray, embedfleet
from embedfleet.testing import HashEmbeddingFunction
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
"""
# Both replicas reserve a whole CPU each: a leaked earlier fleet would leave no
# room for the new one, and start-up would fail after start_timeout.
CREATE_FLEET = """
fleet = embedfleet.remote(
    HashEmbeddingFunction(dimension=4), replicas=2, num_cpus=1, name="cell", start_timeout=20
)
vectors = fleet(["a", "b", "c"])
print(len(vectors), vectors[0].shape)
"""
TEARDOWN = """
fleet.shutdown()
ray.shutdown()
"""


def test_rerunning_the_fleet_cell_in_a_kernel_does_not_leak_or_hang(repo_root):
    cells = [SETUP, CREATE_FLEET, CREATE_FLEET, CREATE_FLEET, TEARDOWN]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": repo_root}}
    )
    client.execute()
    outputs = [
        "".join(output.get("text", "") for output in cell.outputs) for cell in notebook.cells
    ]
    assert outputs[1:4] == ["3 (4,)\n"] * 3

"""The notebooks in notebooks/ run top to bottom in a real Jupyter kernel, offline.

Each is executed with nbclient in a fresh kernel whose environment switches the
Hugging Face hub off and names no Ray cluster: the kernel starts its own small
Ray instance (the notebook's first cell), separate from this session's, and
stops it in its last cell. Committed notebooks carry no outputs; run
``python scripts/strip_notebooks.py`` after working in Jupyter.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("sentence_transformers")
pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300
WIDGET = "application/vnd.jupyter.widget-view+json"

# Live fleet replicas in the kernel's Ray, read from its control store (the state
# API needs the dashboard, which the notebooks leave off). A killed actor takes a
# moment to be marked dead, so wait for the count to settle.
WORKER_LINE = re.compile(r"\(\w+ pid=\d+")
COUNT_REPLICAS = """
import time as _time
from ray._private import state as _state

def _alive_replicas():
    return sum(
        1 for actor in _state.actors().values()
        if actor["ActorClassName"] == "Replica" and actor["State"] == "ALIVE"
    )

_deadline = _time.monotonic() + 15
while _alive_replicas() != EXPECTED and _time.monotonic() < _deadline:
    _time.sleep(0.2)
print(_alive_replicas())
"""


def kernel_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYDEVD_DISABLE_FILE_VALIDATION="1",  # no debugger warning on stderr
    )
    return env


def make_client(notebook: nbformat.NotebookNode) -> nbclient.NotebookClient:
    return nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # Jupyter's working directory
    )


def tagged(notebook: nbformat.NotebookNode, tag: str) -> int:
    (index,) = [i for i, cell in enumerate(notebook.cells) if tag in cell.metadata.get("tags", [])]
    return index


def run_extra(client: nbclient.NotebookClient, source: str) -> str:
    """Run ``source`` in the notebook's kernel (as a cell appended for the purpose)."""
    notebook = client.nb
    notebook.cells.append(nbformat.v4.new_code_cell(source))
    index = len(notebook.cells) - 1
    cell = client.execute_cell(notebook.cells[index], index)
    notebook.cells.pop()
    text = "".join(out.get("text", "") for out in cell.outputs if out.get("name") == "stdout")
    # Ray forwards its workers' output to the kernel's streams at any moment, prefixed
    # "(Replica pid=...)": those lines are not the cell's own output
    # (split on newlines only: a worker's progress bar carries carriage returns)
    lines = [line for line in text.split("\n") if line and not WORKER_LINE.search(line)]
    return "".join(f"{line}\n" for line in lines)


def stream(cell: nbformat.NotebookNode, name: str) -> str:
    return "".join(out.text for out in cell.outputs if out.get("name") == name)


def mime_types(cell: nbformat.NotebookNode) -> set[str]:
    return {mime for out in cell.outputs for mime in out.get("data", {})}


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda path: path.stem)
def test_committed_notebook_is_valid_and_has_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert [cell.outputs for cell in code_cells] == [[]] * len(code_cells)
    assert [cell.execution_count for cell in code_cells] == [None] * len(code_cells)


def test_every_notebook_has_an_execution_test_below():
    executed = {"quickstart", "compare_models"}
    assert {path.stem for path in NOTEBOOK_PATHS} == executed, "add a test that runs it"


@pytest.mark.real_model
def test_quickstart_runs_and_rerunning_the_fleet_cell_keeps_two_replicas():
    notebook = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    fleet_cell, job_cell, plot_cell = (tagged(notebook, t) for t in ("fleet", "job", "plot"))
    client = make_client(notebook)
    client.reset_execution_trackers()
    with client.setup_kernel(env=kernel_env()):
        for index in range(len(notebook.cells)):
            client.execute_cell(notebook.cells[index], index)  # raises on a cell error
            if index == fleet_cell:
                # Both replicas take a whole CPU of the kernel's 2: a leaked earlier fleet
                # would leave the new one unplaceable, and the cell would fail.
                client.execute_cell(notebook.cells[index], index)
                assert run_extra(client, COUNT_REPLICAS.replace("EXPECTED", "2")) == "2\n"
                assert "largest difference" in stream(notebook.cells[index], "stdout")
            if index == fleet_cell + 1:  # fleet.shutdown()
                assert run_extra(client, COUNT_REPLICAS.replace("EXPECTED", "0")) == "0\n"
        assert run_extra(client, "print(ray.is_initialized())") == "False\n"

    job = notebook.cells[job_cell]
    assert "240 rows embedded, 0 rejected, 4 shards" in stream(job, "stdout")
    # The progress bar is one widget updated in place, not a stream of text lines.
    assert WIDGET in mime_types(job)
    stderr = stream(job, "stderr")
    assert "IProgress not found" not in stderr
    assert stderr.count("\n") + stderr.count("\r") < 20, stderr
    assert "image/png" in mime_types(notebook.cells[plot_cell])


@pytest.fixture(scope="module")
def compare_models() -> nbformat.NotebookNode:
    """compare_models.ipynb, executed once for the tests below."""
    notebook = nbformat.read(NOTEBOOKS / "compare_models.ipynb", as_version=4)
    make_client(notebook).execute(env=kernel_env())
    return notebook


def results_rows(notebook: nbformat.NotebookNode) -> dict[str, str]:
    table = notebook.cells[tagged(notebook, "results")].outputs[0]["data"]["text/markdown"]
    return {line.split("|")[1].strip(): line for line in table.splitlines() if "|" in line}


@pytest.mark.real_model
def test_compare_models_reports_recall_and_throughput_for_both_precisions(compare_models):
    rows = results_rows(compare_models)
    assert "recall@1" in rows["precision"] and "docs/s" in rows["precision"]
    for label in ("fp32", "bf16"):
        recall_1, recall_5 = (float(cell) for cell in rows[label].split("|")[2:4])
        assert 0.6 <= recall_1 <= recall_5 <= 1.0
    assert "image/png" in mime_types(compare_models.cells[tagged(compare_models, "plot")])


@pytest.mark.real_model
def test_compare_models_chunks_find_more_long_documents_than_truncated_vectors(compare_models):
    cell = compare_models.cells[tagged(compare_models, "chunking")]
    table = cell.outputs[0]["data"]["text/markdown"]
    rows = {
        line.split("|")[1].strip(): line.split("|") for line in table.splitlines() if "|" in line
    }
    assert float(rows["chunks"][4]) > float(rows["one vector per document"][4])


@pytest.mark.real_model
def test_compare_models_times_the_precisions_interleaved_and_says_when_it_is_noise(
    compare_models,
):
    """A throughput ratio from a measurement too small to hold under load once read
    0.18x against the README's 2x: the notebook measures interleaved rounds over
    seconds of text after a warm-up, reports the median and the spread, and says when
    the machine is too noisy for the ratio to mean anything."""
    cell = compare_models.cells[tagged(compare_models, "throughput")]
    sized = re.search(r"(\d+) texts per pass, (\d+) interleaved rounds", stream(cell, "stdout"))
    texts, rounds = int(sized[1]), int(sized[2])
    assert texts >= 120 and rounds >= 3
    rows = results_rows(compare_models)
    for label in ("fp32", "bf16"):
        median = float(rows[label].split("|")[4])
        low, high = (float(value) for value in rows[label].split("|")[5].split("-"))
        assert low <= median <= high
    table = compare_models.cells[tagged(compare_models, "results")].outputs[0]["data"][
        "text/markdown"
    ]
    assert f"(median of {rounds} interleaved rounds; rounds ranged " in table
    noisy = "too noisy for this figure to mean anything" in table
    assert noisy == bool(re.search(r"passes spread by \d+%|disagree", table))

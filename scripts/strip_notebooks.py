"""Strip outputs from the notebooks before committing them.

    python scripts/strip_notebooks.py            # strip notebooks/*.ipynb in place
    python scripts/strip_notebooks.py --check    # exit 1 naming any notebook with outputs
    python scripts/strip_notebooks.py PATH ...   # only these notebooks

Removes code cells' outputs and execution counts and the widget state Jupyter
saves in the notebook's metadata; cell sources and tags stay as they are.
tests/test_notebooks.py fails on a committed notebook that still has outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
RUN_METADATA = ("widgets", "execution")  # saved by Jupyter or nbclient when run


def strip(notebook: nbformat.NotebookNode) -> bool:
    """Strip ``notebook`` in place; True when anything was removed."""
    changed = False
    for key in RUN_METADATA:
        changed |= notebook.metadata.pop(key, None) is not None
    for cell in notebook.cells:
        for key in RUN_METADATA:
            changed |= cell.metadata.pop(key, None) is not None
        if cell.cell_type != "code":
            continue
        if cell.outputs or cell.execution_count is not None:
            cell.outputs = []
            cell.execution_count = None
            changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--check", action="store_true", help="report, change nothing")
    arguments = parser.parse_args(argv)
    paths = arguments.paths or sorted(NOTEBOOKS.glob("*.ipynb"))
    dirty = []
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        if not strip(notebook):
            continue
        dirty.append(path)
        if not arguments.check:
            nbformat.write(notebook, path)
    for path in dirty:
        print(f"{'has outputs' if arguments.check else 'stripped'}: {path}")
    return 1 if arguments.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())

"""The public surface: everything public is re-exported and listed in __all__."""

from __future__ import annotations

import inspect
import types

import pytest

import embedfleet
from embedfleet import embedding_functions, errors


@pytest.mark.parametrize("module", [embedfleet, embedding_functions, errors])
def test_all_lists_every_public_name_and_only_existing_ones(module):
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not (isinstance(value, types.ModuleType) and name not in module.__all__)
        and not name.isupper()
        and name not in ("annotations", "PackageNotFoundError", "version")
    }
    assert set(module.__all__) - {"__version__", "ENTRY_POINT_GROUP"} >= public - {"__version__"}
    assert all(hasattr(module, name) for name in module.__all__)


def test_chroma_style_imports_work():
    from embedfleet import Documents, EmbeddingFunction, Embeddings  # noqa: F401
    from embedfleet.embedding_functions import (  # noqa: F401
        DefaultEmbeddingFunction,
        InstructorEmbeddingFunction,
        SentenceTransformerEmbeddingFunction,
    )


def test_every_error_derives_from_the_one_base():
    classes = [value for value in vars(errors).values() if inspect.isclass(value)]
    raised = [
        cls for cls in classes if issubclass(cls, Exception) and cls.__module__ == errors.__name__
    ]
    assert raised and all(issubclass(cls, errors.EmbedfleetError) for cls in raised)
    assert set(errors.__all__) == {cls.__name__ for cls in raised}


def test_importing_embedfleet_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, embedfleet; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_errors_survive_pickling_with_their_keyword_attributes():
    import pickle

    from embedfleet.errors import BatchFailedError, RateLimitError

    error = BatchFailedError(
        "batch 3 failed", batch_index=3, cause=RateLimitError("429", status=429)
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is BatchFailedError and str(copy) == "batch 3 failed"
    assert copy.batch_index == 3 and copy.cause.status == 429

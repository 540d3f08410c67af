"""``embedfleet bench`` runs every path on one small corpus and reports comparable rows."""

from __future__ import annotations

import json

import pytest

from embedfleet import bench
from embedfleet.cli import EXIT_OK, EXIT_USAGE, main
from tests.chroma_model import export_chroma_model

chroma = pytest.importorskip("chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2")


@pytest.fixture(scope="session")
def chroma_download(tmp_path_factory):
    """Chroma's default model, exported here from the packaged weights."""
    return export_chroma_model(tmp_path_factory.mktemp("chroma") / "all-MiniLM-L6-v2")


@pytest.fixture
def chroma_model(monkeypatch, chroma_download):
    """Chroma reads its model from here, whatever the home directory holds."""
    monkeypatch.setattr(chroma.ONNXMiniLM_L6_V2, "DOWNLOAD_PATH", chroma_download)
    return chroma_download


@pytest.fixture
def no_chroma_model(monkeypatch, tmp_path):
    """Chroma's model is not here (as on a machine that never ran Chroma)."""
    monkeypatch.setattr(chroma.ONNXMiniLM_L6_V2, "DOWNLOAD_PATH", tmp_path / "empty")


def test_bench_reports_every_path_side_by_side(tmp_path, local_ray, capsys, chroma_model):
    report = tmp_path / "bench.json"
    code = main(["bench", "--docs", "60", "--replicas", "1", "--report", str(report)])
    assert code == EXIT_OK
    rows = {row["path"].split(" (")[0]: row for row in json.loads(report.read_text())}
    assert set(rows) >= {
        "sentence-transformers encode fp32",
        "embedfleet in-process",
        "embedfleet in-process onnx",
        "chromadb DefaultEmbeddingFunction",
        "full job",
    }
    for path, row in rows.items():
        assert row["docs_per_s"] > 0 and row["tokens_per_s"] > row["docs_per_s"], path
        # torch paths keep fp32's quality; int8 is guarded on its own corpus, not this one
        assert row["min_cosine_to_fp32"] >= (0.995 if "onnx" in path else 0.999), path
        assert row["padding_waste"] >= 1.0, path
    assert rows["sentence-transformers encode fp32"]["ratio_to_encode"] == 1.0
    assert rows["full job"]["ratio_to_in_process"] > 0
    assert rows["full job"]["path"] == "full job (1 replicas x 1 CPU)"
    assert [entry["torch_threads"] for entry in rows["full job"]["placement"]] == [1]
    # Chroma pads every text to 256 tokens: far more padding than any other path
    chroma_padding = rows["chromadb DefaultEmbeddingFunction"]["padding_waste"]
    assert chroma_padding > max(
        row["padding_waste"] for path, row in rows.items() if "chroma" not in path
    )
    assert set(rows["full job"]["startup_phases"]) >= {"ray_init", "fleet", "shard_workers"}
    printed = capsys.readouterr().out
    assert "corpus: 60 documents" in printed and "full job / in-process" in printed
    assert "device: cpu; attention: sdpa" in printed
    assert "job start-up: " in printed and "not measured" not in printed
    assert "nan" not in printed


def test_bench_leaves_chroma_out_where_its_model_is_not_here(no_chroma_model, capsys):
    assert bench._chroma_row(["a text"], 3, None, "cpu") is None
    bench._print_unmeasured(onnx=True, chroma=False)
    assert "chromadb's DefaultEmbeddingFunction: not measured" in capsys.readouterr().out


def test_chromas_padding_is_what_its_tokenizer_runs(chroma_model):
    """Every text truncated and padded to 256 tokens: 256 per text over the real ones."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(chroma_model / "onnx" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=256)
    texts = ["one two three", "a somewhat longer text with a few more words in it", "x " * 400]
    real = sum(len(tokenizer.encode(text).ids) for text in texts)
    assert len(tokenizer.encode(texts[-1]).ids) == 256  # cut at Chroma's limit
    assert bench._chroma_padding(texts) == 256 * len(texts) / real


def test_bench_on_a_gpu_where_none_is_visible_is_a_clear_error(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a GPU machine too
    assert main(["bench", "--device", "cuda", "--docs", "10"]) == EXIT_USAGE
    assert "no CUDA GPU is visible" in capsys.readouterr().err

"""``embedfleet bench`` runs every path on one small corpus and reports comparable rows."""

from __future__ import annotations

import json

from embedfleet.cli import EXIT_OK, EXIT_USAGE, main


def test_bench_reports_every_path_side_by_side(tmp_path, local_ray, capsys):
    report = tmp_path / "bench.json"
    code = main(["bench", "--docs", "60", "--replicas", "1", "--report", str(report)])
    assert code == EXIT_OK
    rows = {row["path"].split(" (")[0]: row for row in json.loads(report.read_text())}
    assert set(rows) >= {
        "sentence-transformers encode fp32",
        "embedfleet in-process",
        "embedfleet in-process onnx",
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
    printed = capsys.readouterr().out
    assert "corpus: 60 documents" in printed and "full job / in-process" in printed
    assert "device: cpu; attention: sdpa" in printed


def test_bench_on_a_gpu_where_none_is_visible_is_a_clear_error(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a GPU machine too
    assert main(["bench", "--device", "cuda", "--docs", "10"]) == EXIT_USAGE
    assert "no CUDA GPU is visible" in capsys.readouterr().err

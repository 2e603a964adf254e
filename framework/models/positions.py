"""How long an input a model takes: what a task checks its sequence length against."""
from __future__ import annotations


def position_limit(config) -> int | None:
    """How many tokens the model's position embeddings take (None: no fixed limit).

    RoBERTa-style models start positions after the padding index, so they take
    ``max_position_embeddings - pad_token_id - 1`` tokens (514 → 512).
    """
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        return int(limit) - int(getattr(config, "pad_token_id", 1) or 0) - 1
    return int(limit)

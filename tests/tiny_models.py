"""Tiny models the unit tests share (imported like browser_lab: tests/ is on sys.path under pytest)."""

from labkit import models


def tiny_gemma(seed: int = 0):
    """Gemma 3's architecture at toy size, random weights."""
    cfg = models.load_config("gemma-3-270m")
    cfg.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
               head_dim=32, vocab_size=300, max_position_embeddings=64, sliding_window=16)
    cfg.pop("layer_types", None)
    return models.build_random_model(cfg, dtype="fp32", device="cpu", seed=seed).model

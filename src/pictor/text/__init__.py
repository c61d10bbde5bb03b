"""Text conditioning: prompts -> token embeddings (B, L, D) and padding mask (B, L)."""

from pictor.text.encoders import (
    HFTextEncoder,
    TextEncoder,
    TrainableTextEncoder,
    TrainableTextEncoderConfig,
    load_text_encoder,
)

__all__ = [
    "HFTextEncoder",
    "TextEncoder",
    "TrainableTextEncoder",
    "TrainableTextEncoderConfig",
    "load_text_encoder",
]

"""The two small models the training jobs use: an image CNN and a causal language model."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN", "TinyCausalLM", "images_to_float"]


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """``uint8`` batches of shape ``(B, H, W, C)`` as the model's ``float32`` ``(B, C, H, W)`` in [0, 1].

    Runs on whatever device the batch is on, so the conversion happens on the GPU after a
    cheap ``uint8`` copy rather than on the CPU before a 4x larger one.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (B, H, W, C), got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div_(255.0)


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks, global average pooling and a linear head; any input size >= 4x4.

    Args:
        num_classes: Number of output classes.
        in_channels: Channels of the input images. Defaults to ``3``.
        width: Channels of the first block (the others use ``2 * width``). Defaults to ``32``.
        dropout: Dropout before the head. Defaults to ``0.1``.
    """

    def __init__(self, num_classes: int, *, in_channels: int = 3, width: int = 32, dropout: float = 0.1):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.features = nn.Sequential(
            block(in_channels, width),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` for float images ``(B, C, H, W)`` in [0, 1]."""
        return self.head(self.features((x - 0.5) / 0.5))


class TinyCausalLM(nn.Module):
    """A small GPT-style decoder: token + position embeddings, pre-norm blocks, tied output head.

    Args:
        vocab_size: Number of token ids.
        max_len: Longest sequence the position embedding covers.
        d_model: Embedding width. Defaults to ``64``.
        n_layers: Transformer blocks. Defaults to ``2``.
        n_heads: Attention heads. Defaults to ``4``.
        dropout: Dropout inside the blocks. Defaults to ``0.0``.
    """

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        *,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.max_len = max_len
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tokens.weight  # tied: the output head reuses the token embedding
        # Small embeddings (GPT-2 style): with the default N(0, 1) the tied head starts with huge logits.
        nn.init.normal_(self.tokens.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab_size)`` for token ids ``(B, T)``."""
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
        pos = torch.arange(length, device=tokens.device)
        x = self.tokens(tokens) + self.positions(pos)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        x = self.blocks(x, mask=mask, is_causal=True)
        return self.head(self.norm(x))

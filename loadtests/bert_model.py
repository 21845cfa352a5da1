"""A BERT-shaped PyTorch encoder with random weights, exported as a ``torch.export`` program
(``.pt2``) for the built-in model server: the framework model of ``bench_coldstart --model bert``.

Plain ``torch.nn`` built from a config, nothing downloaded: token and position embeddings,
``layers`` post-norm encoder layers (fused QKV projection, ``scaled_dot_product_attention``,
GELU feed-forward), a 2-class head on the first token. The default config is BERT-base's shape
(vocabulary 30,522, d=768, 12 layers, 12 heads, FF 3,072: 109 M parameters, 436 MB in FP32).

The program takes one input, ``input_ids`` (INT64 token ids ``[batch, seq]``, both dimensions
dynamic, ``seq`` up to ``max_len``), and returns ``output-0`` (FP32 logits ``[batch, 2]``). The
position ids are a slice of a buffer, not ``torch.arange``: an ``arange`` would be recorded on
the CPU and break the program once moved to ``cuda``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast


@dataclass(frozen=True, slots=True, kw_only=True)
class BertConfig:
    """The encoder's shape."""

    vocab: int = 30_522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    ff: int = 3_072
    max_len: int = 512
    classes: int = 2

    def parameters(self) -> int:
        """The parameter count (weights and biases, LayerNorms included)."""
        d = self.hidden
        per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * self.ff + self.ff)
        per_layer += self.ff * d + d + 2 * (2 * d)
        return (
            (self.vocab * d + self.max_len * d + 2 * d + self.layers * per_layer)
            + d * self.classes
            + self.classes
        )


def build(config: BertConfig, seed: int = 0) -> Any:
    """The encoder as a ``torch.nn.Module`` in eval mode, seeded random weights."""
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812 (torch's own spelling)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = config.hidden
            self.qkv = nn.Linear(d, 3 * d)
            self.out = nn.Linear(d, d)
            self.norm1 = nn.LayerNorm(d)
            self.ff1 = nn.Linear(d, config.ff)
            self.ff2 = nn.Linear(config.ff, d)
            self.norm2 = nn.LayerNorm(d)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            b, s, d = h.shape
            heads = config.heads
            qkv = self.qkv(h).reshape(b, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            h = self.norm1(h + self.out(attn.transpose(1, 2).reshape(b, s, d)))
            out: torch.Tensor = self.norm2(h + self.ff2(F.gelu(self.ff1(h))))
            return out

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(config.vocab, config.hidden)
            self.positions = nn.Embedding(config.max_len, config.hidden)
            self.register_buffer("position_ids", torch.arange(config.max_len), persistent=False)
            self.norm = nn.LayerNorm(config.hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(config.layers))
            self.head = nn.Linear(config.hidden, config.classes)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # the V2 input's name
            seq = input_ids.shape[1]
            positions = cast("torch.Tensor", self.position_ids)  # a buffer
            h = self.tokens(input_ids) + self.positions(positions[:seq])
            h = self.norm(h)
            for layer in self.layers:
                h = layer(h)
            logits: torch.Tensor = self.head(h[:, 0])
            return logits

    torch.manual_seed(seed)
    return Encoder().eval()


def export(config: BertConfig, path: Path, seed: int = 0) -> Path:
    """Build the encoder and save it as a ``torch.export`` program at ``path``."""
    import torch

    model = build(config, seed)
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=config.max_len)
    example = torch.zeros((2, 8), dtype=torch.int64)
    with torch.no_grad():
        program = torch.export.export(
            model, (example,), dynamic_shapes={"input_ids": {0: batch, 1: seq}}
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path

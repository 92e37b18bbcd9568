"""A Llama-style decoder (Touvron et al. 2023) whose linear layers come from a format factory.

RMSNorm pre-norm, rotary position embeddings (Su et al. 2021), SwiGLU MLP (Shazeer 2020), causal attention
through `scaled_dot_product_attention`, no biases, untied embedding and head. Every linear layer inside
the blocks is built by one `LinearFactory`, which is where a compressed format enters; the embedding and the
head stay dense, as in the compression scaling-law papers (they are not counted in N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cslaws.errors import BenchError
from cslaws.formats.linear import LinearFactory


@dataclass(frozen=True)
class Size:
    n_layer: int
    d_model: int
    n_head: int
    lr: float

    @property
    def d_ff(self) -> int:
        """SwiGLU width: 8/3 of the model width rounded up to a multiple of 256 (Llama), or of 32 when tiny."""
        multiple = 256 if self.d_model >= 256 else 32
        return multiple * math.ceil(8 * self.d_model / 3 / multiple)


# The paper family (QuEST / Panferov et al. 2025, 30M-800M non-embedding parameters) and CPU-sized models.
# The learning rates of nano-159k come from pilot runs at 5 tokens per parameter (README, "The CPU study");
# those of 14k, 23k and 44k follow their trend with width. At the study's 50 tokens per parameter, 14k-micro
# were piloted again at 0.5-1.4x these rates: each is within 0.011 nats of the best, except 14k (0.017).
SIZES: dict[str, Size] = {
    "14k": Size(n_layer=2, d_model=24, n_head=2, lr=1.2e-2),
    "23k": Size(n_layer=2, d_model=28, n_head=2, lr=1.1e-2),
    "nano": Size(n_layer=2, d_model=32, n_head=2, lr=1e-2),
    "44k": Size(n_layer=2, d_model=40, n_head=2, lr=9e-3),
    "micro": Size(n_layer=2, d_model=48, n_head=2, lr=8e-3),
    "79k": Size(n_layer=2, d_model=56, n_head=2, lr=6e-3),
    "milli": Size(n_layer=2, d_model=64, n_head=2, lr=6e-3),
    "159k": Size(n_layer=2, d_model=80, n_head=2, lr=4.5e-3),
    "tiny": Size(n_layer=3, d_model=80, n_head=2, lr=3e-3),
    "mini": Size(n_layer=3, d_model=96, n_head=3, lr=3e-3),
    "small": Size(n_layer=4, d_model=128, n_head=4, lr=2e-3),
    "medium": Size(n_layer=4, d_model=192, n_head=6, lr=2e-3),
    "30M": Size(n_layer=6, d_model=640, n_head=5, lr=1.2e-3),
    "50M": Size(n_layer=7, d_model=768, n_head=6, lr=1.2e-3),
    "100M": Size(n_layer=8, d_model=1024, n_head=8, lr=6e-4),
    "200M": Size(n_layer=10, d_model=1280, n_head=10, lr=3e-4),
    "430M": Size(n_layer=13, d_model=1664, n_head=13, lr=1.5e-4),
    "800M": Size(n_layer=16, d_model=2048, n_head=16, lr=7.5e-5),
}


def get_size(name: str) -> Size:
    try:
        return SIZES[name]
    except KeyError:
        raise BenchError(f"unknown model size {name!r}; allowed: {', '.join(SIZES)}") from None


def non_embedding_params(size: Size) -> int:
    """N in closed form: attention 4 d^2, SwiGLU 3 d d_ff and two RMSNorm gains per block, plus the final norm."""
    d = size.d_model
    return size.n_layer * (4 * d * d + 3 * d * size.d_ff + 2 * d) + d


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin of shape (seq_len, head_dim / 2): rotation angle t * base^(-2i / head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (x[2i], x[2i+1]) of x: (B, H, T, hd) by the angle of their position."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, size: Size, linear: LinearFactory) -> None:
        super().__init__()
        if size.d_model % size.n_head:
            raise ValueError(f"d_model {size.d_model} is not divisible by n_head {size.n_head}")
        self.n_head = size.n_head
        self.qkv = linear(size.d_model, 3 * size.d_model)
        self.proj = linear(size.d_model, size.d_model)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, size: Size, linear: LinearFactory) -> None:
        super().__init__()
        self.gate = linear(size.d_model, size.d_ff)
        self.up = linear(size.d_model, size.d_ff)
        self.down = linear(size.d_ff, size.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, size: Size, linear: LinearFactory) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(size.d_model)
        self.attn = Attention(size, linear)
        self.mlp_norm = nn.RMSNorm(size.d_model)
        self.mlp = SwiGLU(size, linear)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, size: Size, vocab_size: int, linear: LinearFactory | None = None, max_seq_len: int = 4096) -> None:
        super().__init__()
        linear = linear if linear is not None else LinearFactory()
        self.size = size
        self.embed = nn.Embedding(vocab_size, size.d_model)
        self.blocks = nn.ModuleList(Block(size, linear) for _ in range(size.n_layer))
        self.norm = nn.RMSNorm(size.d_model)
        self.head = nn.Linear(size.d_model, vocab_size, bias=False)
        cos, sin = rotary_tables(max_seq_len, size.d_model // size.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 style: scale the residual projections by the depth so the residual stream's variance stays O(1).
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * size.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def n_params(self) -> int:
        """Non-embedding parameters N: everything but the token embedding and the output head."""
        skip = {id(self.embed.weight), id(self.head.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        if T > self.cos.shape[0]:
            raise ValueError(f"sequence length {T} exceeds the rotary table's {self.cos.shape[0]}")
        cos, sin = self.cos[:T], self.sin[:T]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))

"""The decoder-only transformer behind every GIRL model: the generator G and the reward model U.

One class covers three public families. They differ in a handful of switches, all read from the
Hugging Face config.json (`model_type`):

               positions   norm        MLP           biases          embeddings
    gpt2       learned     LayerNorm   GELU (tanh)   everywhere      tied
    llama      RoPE        RMSNorm     SwiGLU        none            tied or not
    qwen2      RoPE        RMSNorm     SwiGLU        q, k, v only    tied or not

Both llama and qwen2 may use grouped-query attention (fewer key/value heads than query heads).
There is no dropout anywhere: PPO needs the log-probs of a rollout and of its replay to agree.
Pure architecture: reading and writing Hugging Face folders is girl/lm/checkpoint.py's job.
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

FAMILIES = ("gpt2", "llama", "qwen2")


@dataclass
class Config:
    model_type: str = "llama"  # one of FAMILIES
    vocab_size: int = 512
    dim: int = 64  # width of the residual stream
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4  # < n_heads: grouped-query attention
    head_dim: int = 0  # 0: dim // n_heads
    hidden_dim: int = 256  # width of the MLP
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {FAMILIES}")
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def gpt2(self) -> bool:
        return self.model_type == "gpt2"

    @property
    def qkv_bias(self) -> bool:
        return self.model_type in ("gpt2", "qwen2")


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · w, computed in float32 as the reference does, so bf16 agrees too."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """cos and sin of the rotary angles pos · θ^(-2i/d), each [B, 1, T, head_dim] to broadcast over heads.

    Computed from θ in float32 on every call rather than kept in a buffer: model.to(bfloat16) would round
    a buffer of frequencies too, turning the angles at position 1000 wrong by whole radians.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    angles = position_ids[..., None].float() * inv_freq  # [B, T, head_dim/2]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def apply_rope(x, cos, sin):
    """Rotate pairs (x[i], x[i + d/2]) by their angle: Hugging Face's "rotate half" layout.

    (llama2.c and Meta's original code rotate adjacent pairs (x[2i], x[2i+1]) instead; converting those
    weights permutes the rows of wq and wk, see tests/stories260k.py.)
    """
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache:
    """Keys and values of all layers for the positions seen so far, preallocated for `max_len` positions."""

    def __init__(self, config: Config, batch_size: int, max_len: int, device=None, dtype=None):
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled; advanced by Transformer after all layers have written

    def update(self, layer: int, k, v):
        """Store this step's k, v [B, KV, T, hd] after the cached ones; return all of them."""
        end = self.length + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache holds {self.k.shape[3]} positions, {end} were asked for")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.q = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.k = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=c.gpt2)

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int):
        B, T, _ = x.shape
        c = self.c
        q = self.q(x).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        # mask None means plain causal attention over this call's tokens alone (see Transformer.forward)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=c.n_kv_heads != c.n_heads
        )
        return self.o(y.transpose(1, 2).reshape(B, T, c.n_heads * c.head_dim))


class MLP(nn.Module):
    """gpt2: down(gelu(up x)).  llama, qwen2 (SwiGLU): down(silu(gate x) · up x)."""

    def __init__(self, c: Config):
        super().__init__()
        self.gate = None if c.gpt2 else nn.Linear(c.dim, c.hidden_dim, bias=False)
        self.up = nn.Linear(c.dim, c.hidden_dim, bias=c.gpt2)
        self.down = nn.Linear(c.hidden_dim, c.dim, bias=c.gpt2)

    def forward(self, x):
        if self.gate is None:
            return self.down(F.gelu(self.up(x), approximate="tanh"))
        return self.down(F.silu(self.gate(x)) * self.up(x))


def make_norm(c: Config):
    return nn.LayerNorm(c.dim, eps=c.norm_eps) if c.gpt2 else RMSNorm(c.dim, c.norm_eps)


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attn_norm = make_norm(c)
        self.attn = Attention(c)
        self.mlp_norm = make_norm(c)
        self.mlp = MLP(c)

    def forward(self, x, rope, mask, cache, layer):
        x = x + self.attn(self.attn_norm(x), rope, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: Config, lm_head: bool = True):
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.dim)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.dim) if c.gpt2 else None
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = make_norm(c)
        self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=False) if lm_head else None  # a reward model has none
        self.tie_weights()
        self.apply(self._init_weights)
        # GPT-2's scaled init: each block adds two residual branches, keep their sum's variance fixed
        for name, p in self.named_parameters():
            if name.endswith(("attn.o.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.n_layers))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None):
        """The final normed hidden states [B, T, dim]; reward and value heads read these.

        attention_mask [B, past + T]: 1 for real tokens, 0 for padding (left or right). Positions count
        real tokens only, so a left-padded prompt gets the same positions as it would alone.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        if past + T > self.config.max_seq_len:
            raise ValueError(f"{past + T} positions exceed the model's max_seq_len {self.config.max_seq_len}")

        x = self.tok_emb(input_ids)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        else:
            rope = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        mask = None
        if attention_mask is not None or past > 0:
            mask = attention_bias(attention_mask, B, T, past, input_ids.device)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.norm(x)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None):
        """Logits [B, T, vocab] (see hidden_states for the arguments)."""
        return self.lm_head(self.hidden_states(input_ids, attention_mask, position_ids, cache))

    def tie_weights(self):
        if self.lm_head is not None and self.config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() counts a tied weight once


def last_token_index(attention_mask, B: int, T: int, device):
    """Position of each row's last real token: the rightmost 1 of the mask (right or left padding)."""
    if attention_mask is None:
        return torch.full((B,), T - 1, device=device)
    return (attention_mask.long() * torch.arange(T, device=device)).argmax(-1)


class RewardModel(nn.Module):
    """U(C, J) -> R (GIRL §3.2): a Transformer without its LM head, and a linear head from the hidden state
    of the last real token of U's input (template(C, J), the shared line, EOS; girl/reward.py) to one scalar.

    Saved as a Hugging Face *ForSequenceClassification folder with num_labels = 1 (head = "score").
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.backbone = Transformer(config, lm_head=False)
        self.head = nn.Linear(config.dim, 1, bias=False)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(config.dim + 1))  # reward std ~1 at the start

    def forward(self, input_ids, attention_mask=None, every_position: bool = False):
        """Scores [B] of the sequences input_ids [B, T]; with every_position, the head at every position [B, T]:
        PPO's critic V(s_t), which starts as U's own head."""
        h = self.backbone.hidden_states(input_ids, attention_mask)
        if every_position:
            return self.head(h).squeeze(-1)
        last = last_token_index(attention_mask, *input_ids.shape, input_ids.device)
        return self.head(h[torch.arange(len(h), device=h.device), last]).squeeze(-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def from_generator(cls, G: Transformer, n_layers: int | None = None) -> "RewardModel":
        """U started from a language model: G's embeddings, its lowest n_layers blocks (default: all) and its
        final norm, and a new head (the paper starts U from a smaller pretrained LLM)."""
        U = cls(replace(G.config, n_layers=n_layers or G.config.n_layers))
        wanted = U.backbone.state_dict().keys()
        U.backbone.load_state_dict({k: v for k, v in G.state_dict().items() if k in wanted})
        return U.to(next(G.parameters()).device)


def attention_bias(attention_mask, B: int, T: int, past: int, device):
    """Boolean [B, 1, T, past + T], True where query i may attend to key j: j is causal and not padding.

    A padding query would see no key at all, and softmax over nothing is NaN; we let it see itself.
    Its output is garbage but finite, and nothing downstream reads it.
    """
    q_pos = torch.arange(past, past + T, device=device)[:, None]
    k_pos = torch.arange(past + T, device=device)[None, :]
    allowed = (k_pos <= q_pos).expand(B, T, past + T)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    return (allowed | (k_pos == q_pos))[:, None]

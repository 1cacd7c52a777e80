"""The losses of GIRL, each a pure function of tensors with its equation."""

import torch
import torch.nn.functional as F

from girl.data import IGNORE


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """L_sft = −(1/|J|) Σ_{t ∈ J} log p_θ(x_t | x_<t)   (GIRL §3.1)

    J: the positions whose label is not IGNORE (the JD's tokens and its EOS). logits [B, T, V] at
    position t predict token t+1, so they are compared with labels shifted by one.
    reduction="sum" gives Σ instead of the mean, for averaging over several micro-batches.
    """
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE, reduction=reduction)

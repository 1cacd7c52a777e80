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


def rm_loss(r_pos: torch.Tensor, r_neg: torch.Tensor, margin: float = 0.0, center_coef: float = 0.0) -> torch.Tensor:
    """L_rmt = −log σ(U(C, J+) − U(C, J−) − m) + η · (U(C, J+) + U(C, J−))²   (GIRL §3.2), batch mean.

    The first term is the paper's pairwise loss (m = 0): the accepted JD should score above the rejected
    one. A margin m > 0 asks for a gap of at least m (as in Llama 2's reward model). The centering term
    with coefficient η keeps rewards near zero mean, since the pairwise term sees only differences.
    """
    return -F.logsigmoid(r_pos - r_neg - margin).mean() + center_coef * ((r_pos + r_neg) ** 2).mean()

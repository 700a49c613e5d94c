"""The NT-Xent loss of SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", eq. 1), with the negatives of the whole global batch under DDP."""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.nn.functional import all_gather


def gather_with_grad(z: Tensor) -> tuple[Tensor, int]:
    """`z` of every process concatenated in rank order (W b, d), gradients flowing back to each process's own
    rows, and this process's rank; in a single process `z` itself and 0."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    return torch.cat(all_gather(z)), dist.get_rank()


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: bool = True) -> Tensor:
    """NT-Xent (eq. 1): for each of the 2N views i, with j its positive (the other view of the same image),

        l(i, j) = -log [ exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) ],  sim = cosine,

    averaged over all 2N views (Algorithm 1). `z1`, `z2`: this process's projections (b, d) of the two views,
    row r of each from the same image. With `gather` under DDP the columns (the positives and negatives) are
    every process's 2N = 2 W b views; each process scores only its own 2b rows, and their mean is its loss:
    DDP averages the processes' gradients and the gather sums the gradients sent back to each row, which
    together give the gradient of the single-process loss over the global batch."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"NT-Xent needs two views' projections of the same shape (b, d), got {z1.shape} and {z2.shape}"
        )
    # In fp32 under autocast: exp(sim / t) spans e^(+-1/t), and the log-sum-exp over thousands of columns loses
    # bf16's 8 bits of mantissa.
    local = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    b = len(z1)
    all1, rank = gather_with_grad(local[:b]) if gather else (local[:b], 0)
    all2, _ = gather_with_grad(local[b:]) if gather else (local[b:], 0)
    n = len(all1)
    logits = local @ torch.cat([all1, all2]).T / temperature  # (2b, 2N): own rows against every view
    rows = torch.arange(b, device=local.device) + rank * b  # the global index of this process's images
    itself = torch.cat([rows, rows + n])
    positive = torch.cat([rows + n, rows])
    logits = logits.masked_fill(F.one_hot(itself, 2 * n).bool(), float("-inf"))  # k != i
    return F.cross_entropy(logits, positive)

"""Vector quantisation (van den Oord et al. 2017): the nearest-code lookup with the straight-through gradient,
the commitment and codebook losses of eq. 3, codebook updates by exponential moving averages (appendix A.1),
restarts of dead codes, and the codebook's usage over an epoch."""

from typing import Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric


def nearest_codes(vectors: Tensor, codebook: Tensor) -> Tensor:
    """The index of the nearest code for each row of `vectors` (N, D) in `codebook` (K, D), by squared Euclidean
    distance: argmin_k ||z - e_k||^2 = argmin_k (||e_k||^2 - 2 z.e_k), ||z||^2 being the same for every k (and
    left out, so that it cannot cancel the small differences between codes)."""
    return (codebook.pow(2).sum(1) - 2 * vectors @ codebook.T).argmin(1)


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """z_q forward, with the gradient that reaches it handed unchanged to z: the decoder's input gradient copied
    to the encoder's output (van den Oord et al. 2017, sec. 3.1), since the nearest-code lookup has none."""
    return z + (z_q - z).detach()


def as_rows(z: Tensor) -> Tensor:
    """A grid of vectors (B, D, H, W) as rows (B * H * W, D), in float32."""
    return z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])


class Quantized(NamedTuple):
    quantized: Tensor  # z_q, (B, D, H, W), with the straight-through gradient to z
    indices: Tensor  # (B, H, W) code indices
    loss: Tensor  # beta times the commitment loss, plus the codebook loss when that updates the codes (eq. 3)


class VectorQuantizer(nn.Module):
    """A codebook of `num_codes` vectors of size `dim`, applied at each cell of a grid (B, dim, H, W).

    `forward(z)` replaces each vector by its nearest code and returns the loss terms of eq. 3 that concern the
    codes; `update_codebook(z, indices)`, called once per training step, moves the codes (with `update="ema"`),
    counts how long each code has gone unused and restarts the codes unused for `dead_after` steps at encoder
    outputs of the current batch. The initial codes count as unused for that long, so the first training step
    restarts every code its batch leaves unused: a data-dependent initialisation.

    With EMA updates (appendix A.1) the codebook is a buffer: N_i and m_i are exponential moving averages of the
    number and the sum of the vectors assigned to code i, and e_i = m_i / N_i. They start at N_i = 1, m_i = e_i
    (one pseudo-vector at the initial code), so e_i = m_i / N_i holds from the start and a code left unused
    keeps its place. With `update="loss"` the codebook is a parameter trained by ||sg[z_e] - e||^2.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        update: Literal["ema", "loss"] = "ema",
        decay: float = 0.99,
        dead_after: int = 100,
    ) -> None:
        """
        Args:
            num_codes: K, the codebook's size.
            dim: D, the size of each code vector.
            beta: weight of the commitment loss ||z_e - sg[e]||^2 (eq. 3; the paper uses 0.25).
            update: "ema" (moving averages, appendix A.1) or "loss" (the codebook loss of eq. 3).
            decay: gamma of the moving averages.
            dead_after: a code unused for this many training steps is restarted.
        """
        super().__init__()
        if update not in ("ema", "loss"):
            raise ValueError(f"--model.codebook_update must be 'ema' or 'loss', got {update!r}")
        if num_codes < 1 or dim < 1 or beta < 0 or not 0 < decay < 1 or dead_after < 1:
            raise ValueError(
                "--model: num_codes and embedding_dim must be >= 1, beta >= 0, decay in (0, 1) and dead_after >= 1; "
                f"got {num_codes}, {dim}, {beta}, {decay} and {dead_after}"
            )
        self.num_codes, self.dim, self.beta, self.ema = num_codes, dim, beta, update == "ema"
        self.decay, self.dead_after = decay, dead_after
        initial = torch.randn(num_codes, dim)
        if self.ema:
            self.register_buffer("codebook", initial)
            self.register_buffer("cluster_size", torch.ones(num_codes))  # N_i
            self.register_buffer("code_sum", initial.clone())  # m_i
        else:
            self.codebook = nn.Parameter(initial)
        self.register_buffer("idle_steps", torch.full((num_codes,), dead_after, dtype=torch.long))

    def nearest(self, z: Tensor) -> Tensor:
        """The index of the nearest code at each cell of z (B, D, H, W): (B, H, W)."""
        # In float32 whatever the autocast: in bf16 the distances of nearby codes would tie or swap.
        with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
            indices = nearest_codes(as_rows(z), self.codebook.float())
        return indices.view(z.shape[0], *z.shape[2:])

    def vectors(self, indices: Tensor) -> Tensor:
        """The code vectors of a grid of indices (B, H, W): (B, D, H, W)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def quantize(self, z: Tensor) -> Tensor:
        """Each vector of z replaced by its nearest code (no gradient to z; the model's forward has that)."""
        return self.vectors(self.nearest(z))

    def forward(self, z: Tensor) -> Quantized:
        indices = self.nearest(z)
        z = z.float()
        z_q = self.vectors(indices)
        loss = self.beta * F.mse_loss(z, z_q.detach())  # the commitment loss, beta ||z_e - sg[e]||^2
        if not self.ema:
            loss = loss + F.mse_loss(z_q, z.detach())  # the codebook loss, ||sg[z_e] - e||^2
        return Quantized(straight_through(z, z_q), indices, loss)

    @torch.no_grad()
    def update_codebook(self, z: Tensor, indices: Tensor) -> None:
        """One training step's update of the codes from the encoder outputs z (B, D, H, W) and their nearest
        codes: the moving averages (with `update="ema"`), then the restarts of dead codes. Under DDP the counts
        and sums are those of every process, and the restarted codes those of the first."""
        rows, flat = as_rows(z), indices.reshape(-1)
        counts = torch.zeros(self.num_codes, device=z.device).index_add_(
            0, flat, torch.ones_like(flat, dtype=torch.float)
        )
        distributed = dist.is_available() and dist.is_initialized()
        if self.ema:
            sums = torch.zeros_like(self.code_sum).index_add_(0, flat, rows)
            if distributed:
                dist.all_reduce(counts)
                dist.all_reduce(sums)
            # Appendix A.1: N_i <- gamma N_i + (1 - gamma) n_i, m_i <- gamma m_i + (1 - gamma) sum_j z_ij, e_i = m_i / N_i.
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.code_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            self.codebook.copy_(self.code_sum / self.cluster_size[:, None])
        elif distributed:
            dist.all_reduce(counts)
        self.idle_steps.copy_(torch.where(counts > 0, 0, self.idle_steps + 1))
        self.restart_dead_codes(rows)
        if distributed:
            for state in (self.codebook, *((self.cluster_size, self.code_sum) if self.ema else ())):
                dist.broadcast(state, src=0)

    def restart_dead_codes(self, rows: Tensor) -> None:
        """Move every code unused for `dead_after` steps to an encoder output of the batch drawn at random
        (Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021): one draw per code, kept only where the code is
        dead, so the step needs no host sync to count them. A restarted code's averages hold that one vector."""
        dead = self.idle_steps >= self.dead_after
        candidates = rows[torch.randint(0, len(rows), (self.num_codes,), device=rows.device)]
        self.codebook.copy_(torch.where(dead[:, None], candidates, self.codebook))
        if self.ema:
            self.cluster_size.copy_(torch.where(dead, 1.0, self.cluster_size))
            self.code_sum.copy_(torch.where(dead[:, None], candidates, self.code_sum))
        self.idle_steps.masked_fill_(dead, 0)


class CodeUsage(Metric):
    """How a K-code book was used over a whole epoch: the perplexity exp(H(p)) of the codes' frequencies p (K when
    every code is used equally, 1 when one code takes everything) and the fraction of the codes used at least
    once. Counted over the epoch, not per batch: a batch of n vectors shows at most n codes, so per-batch
    figures depend on the batch size."""

    full_state_update = False

    def __init__(self, num_codes: int) -> None:
        super().__init__()
        self.add_state("counts", torch.zeros(num_codes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, indices: Tensor) -> None:
        flat = indices.reshape(-1)
        self.counts.index_add_(0, flat, torch.ones_like(flat))

    def compute(self) -> dict[str, Tensor]:
        p = self.counts.double() / self.counts.sum().clamp_min(1)
        entropy = -torch.special.xlogy(p, p).sum()  # 0 log 0 = 0 for the unused codes
        return {"perplexity": entropy.exp().float(), "codes_used": (self.counts > 0).float().mean()}

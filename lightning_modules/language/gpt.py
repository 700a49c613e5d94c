"""Decoder-only transformer language model (GPT, Radford et al. 2018) on characters: token and learned
position embeddings (or rotary ones, a flag), pre-norm blocks of causal self-attention and a GELU MLP
(Vaswani et al. 2017, with the norm moved before each sub-layer as in GPT-2), a final LayerNorm and an
output head tied to the token embedding. Trained on next-character cross-entropy, reported in nats and
bits per character."""

import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from jsonargparse.typing import PositiveInt
from torch import nn

from lightning_modules.blocks.transformer import KVCache, TransformerBlock, rotary_angles
from lightning_modules.optim import WarmupDecay, decay_groups, warmup_decay


class Transformer(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
        bias: bool,
        position: Literal["learned", "rope"] = "learned",
        attention_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.block_size, self.head_dim = block_size, n_embd // n_head
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        # GPT-2's learned absolute positions, or none here and rotary ones inside attention.
        self.position_embedding = nn.Embedding(block_size, n_embd) if position == "learned" else None
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(n_embd, n_head, 4.0, dropout, bias, causal=True, attention_dropout=attention_dropout)
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): the output head reads with the input embedding's matrix.
        self.head.weight = self.token_embedding.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: the projections that write into the residual stream get std 0.02 / sqrt(2 L),
        # so the stream's variance does not grow with depth.
        for name, parameter in self.named_parameters():
            if name.endswith(("attention.proj.weight", "mlp.2.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start = cache.length if cache is not None else 0
        if start + idx.shape[1] > self.block_size:
            raise ValueError(f"{start + idx.shape[1]} tokens exceed the model's context of {self.block_size}")
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.token_embedding(idx)
        rotary = None
        if self.position_embedding is not None:
            x = x + self.position_embedding(positions)
        else:
            rotary = rotary_angles(positions, self.head_dim)
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer, rotary)
        return self.head(self.ln_f(x))


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-1/N sum_t log P(u_t | u_<t) (Radford et al. 2018, eq. 1, as a mean loss), in nats per character."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


class GPT(L.LightningModule):
    """A char-level GPT; `generate` continues a prompt of token ids, with a key/value cache."""

    benchmark_metric = "test/loss_nats"
    throughput_unit = "tokens"

    def __init__(
        self,
        vocab_size: int | None = None,
        block_size: PositiveInt = 256,
        n_layer: PositiveInt = 6,
        n_head: PositiveInt = 6,
        n_embd: PositiveInt = 384,
        dropout: float = 0.2,
        attention_dropout: float | None = None,
        bias: bool = False,
        lr: float = 1e-3,
        min_lr: float = 1e-4,
        warmup_steps: int = 100,
        lr_decay_steps: int | None = None,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.99),
        compile: bool = False,
        position: Literal["learned", "rope"] = "learned",
        sequence_length: int | None = None,
    ) -> None:
        """
        Args:
            vocab_size: number of distinct characters; set from the DataModule by scripts/fit.py.
            block_size: the context: the most characters the model sees (its position embeddings).
            n_layer: transformer blocks.
            n_head: attention heads per block; must divide n_embd.
            n_embd: width of the residual stream.
            dropout: dropout on embeddings, attention weights and residual branches (0 disables it).
            attention_dropout: dropout on the attention weights alone, default `dropout`; 0 lets torch run its
                fused attention kernel (none of the CPU ones takes dropout).
            bias: biases in the linear layers and LayerNorms.
            lr: peak AdamW learning rate, reached after the warm-up.
            min_lr: the learning rate at the end of the cosine decay.
            warmup_steps: optimiser steps of linear warm-up.
            lr_decay_steps: step at which the cosine reaches min_lr; default the trainer's max_steps.
            weight_decay: AdamW decoupled weight decay, applied to weight matrices and embeddings only.
            betas: AdamW's (beta1, beta2).
            compile: run the transformer through torch.compile.
            position: "learned" absolute position embeddings (GPT-2) or "rope", rotary embeddings of the
                queries and keys (Su et al. 2021).
            sequence_length: the length of the DataModule's training windows; set from it by scripts/fit.py,
                and at most block_size.
        """
        super().__init__()
        if vocab_size is None:
            raise ValueError("gpt needs text data: use --data text (a UTF-8 file via --data.path)")
        if n_embd % n_head:
            raise ValueError(f"--model.n_embd {n_embd} must be a multiple of --model.n_head {n_head}")
        if sequence_length is not None and sequence_length > block_size:
            raise ValueError(
                f"--data.block_size {sequence_length} is larger than the model's context {block_size}; "
                f"pass --data.block_size {block_size} or less, or --model.block_size {sequence_length}"
            )
        self.save_hyperparameters()
        if position not in ("learned", "rope"):
            raise ValueError(f"--model.position must be learned or rope, got {position!r}")
        if position == "rope" and (n_embd // n_head) % 2:
            raise ValueError(
                f"--model.position rope needs an even head width, got n_embd / n_head = {n_embd // n_head}"
            )
        # Plain ints: the parser's PositiveInt values are an int subclass that torch.compile cannot trace.
        sizes = [int(v) for v in (vocab_size, block_size, n_layer, n_head, n_embd)]
        self.transformer = Transformer(*sizes, dropout, bias, position, attention_dropout)
        if compile:
            self.transformer.compile()  # in place: the state_dict keys stay those of the plain model
        self.val_nll = torchmetrics.MeanMetric()
        self.test_nll = torchmetrics.MeanMetric()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-character logits (B, T, vocab) at every position of idx (B, T)."""
        return self.transformer(idx)

    # --- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue `prompt` (B, T) token ids by `max_new_tokens`; returns (B, T + max_new_tokens).
        temperature 0 is greedy decoding; top_k keeps only the k likeliest characters. The model sees at
        most block_size characters: without the cache the window slides by one each token (recomputing it);
        with the cache, once full, it restarts from the last block_size // 2 characters, so the cost per
        token stays O(block_size). `generator` keeps sampling from drawing on the global random state."""
        block_size = self.hparams.block_size
        tokens, cache = prompt, None
        for _ in range(max_new_tokens):
            if not use_cache:
                logits = self.transformer(tokens[:, -block_size:])
            elif cache is None or cache.length >= block_size:
                keep = block_size if cache is None else block_size // 2
                cache = KVCache(self.hparams.n_layer)
                logits = self.transformer(tokens[:, -keep:], cache)
            else:
                logits = self.transformer(tokens[:, -1:], cache)
            tokens = torch.cat([tokens, self.pick(logits[:, -1], temperature, top_k, generator)], dim=1)
        return tokens

    @staticmethod
    def pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator=None) -> torch.Tensor:
        """One next token (B, 1) from the last position's logits (B, vocab)."""
        if temperature <= 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)

    # --- training ---------------------------------------------------------------------------------
    def count_throughput(self, batch) -> int:
        return batch[0].numel()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = next_token_nll(self.transformer(x), y)
        # on_step only: no running epoch mean to update, and the logger reads it every log_every_n_steps.
        self.log("train/loss_nats", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def score_split(self, batch, metric: torchmetrics.MeanMetric, stage: str) -> None:
        x, y = batch
        # Weighted by characters, so the epoch value is the exact mean over the whole split.
        metric.update(next_token_nll(self.transformer(x), y), weight=y.numel())
        self.log(f"{stage}/loss_nats", metric, prog_bar=stage == "val")

    def on_validation_epoch_end(self) -> None:
        self.log("val/bits_per_char", self.val_nll.compute() / math.log(2))

    def on_test_epoch_end(self) -> None:
        self.log("test/bits_per_char", self.test_nll.compute() / math.log(2))

    def validation_step(self, batch, batch_idx: int) -> None:
        self.score_split(batch, self.val_nll, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.score_split(batch, self.test_nll, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per text window: the most likely next character at every position and each target character's
        negative log-likelihood in nats (their mean over the split is the test loss)."""
        x, y = batch
        logits = self.transformer(x).float()
        nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
        return {"next_token": logits.argmax(-1), "nll_nats": nll}

    def configure_optimizers(self):
        hp = self.hparams
        # Decay on the matrices (linear weights, embeddings), none on biases and norm gains.
        optimizer = torch.optim.AdamW(decay_groups(self.parameters(), hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        max_steps = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        # nanoGPT's schedule: warm-up over warmup_steps + 1, then a cosine down to min_lr at lr_decay_steps.
        factor = WarmupDecay(
            "cosine",
            hp.warmup_steps,
            warmup_ramp=hp.warmup_steps + 1,
            decay_start=hp.warmup_steps,
            decay_end=hp.lr_decay_steps or max_steps,
            min_ratio=hp.min_lr / hp.lr,
        )
        return warmup_decay(optimizer, factor)

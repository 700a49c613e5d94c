"""Keep chosen weight matrices (semi-)orthonormal by projecting them back after optimiser steps."""

import re
from typing import Literal

import lightning as L
import torch
from torch import nn
from torch.nn.utils import parametrize


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A Linear weight as it is; a conv kernel (out, in, k, k) as (out, in*k*k): one row per output map."""
    return weight.reshape(weight.shape[0], -1)


def orthogonality_error(weight: torch.Tensor) -> torch.Tensor:
    """||W W^T - I||_F on the smaller side: rows orthonormal for a wide W, columns for a tall one."""
    matrix = as_matrix(weight).float()
    if matrix.shape[0] > matrix.shape[1]:
        matrix = matrix.T
    gram = matrix @ matrix.T
    return torch.linalg.matrix_norm(gram - torch.eye(len(gram), device=gram.device, dtype=gram.dtype))


def polar_svd(matrix: torch.Tensor) -> torch.Tensor:
    """The orthonormal factor U V^T of W = U S V^T: the nearest (semi-)orthonormal matrix in Frobenius norm
    (Higham 1986, the polar decomposition)."""
    # In float64: LAPACK's divide-and-conquer SVD can fail to converge in float32 on a matrix that is already
    # nearly orthonormal (all singular values close to 1), which is every matrix after the first projection.
    try:
        u, _, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    except torch.linalg.LinAlgError:
        return polar_newton_schulz(matrix, steps=30)  # converges fast from nearly orthonormal matrices
    return (u @ vh).to(matrix.dtype)


def polar_newton_schulz(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """The same factor by the Newton-Schulz iteration X <- 1.5 X - 0.5 X X^T X (Bjorck & Bowie 1971), which
    converges when the singular values of X_0 lie in (0, sqrt(3)): scaling by the Frobenius norm puts them
    in (0, 1]. Matmuls only, so it is cheap on accelerators; run on the wide side, where X X^T is smaller."""
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.T if tall else matrix
    x = x / torch.linalg.matrix_norm(x).clamp_min(1e-12)
    for _ in range(steps):
        x = 1.5 * x - 0.5 * (x @ x.T) @ x
    return x.T if tall else x


class OrthonormalProjection(L.Callback):
    """After every `every_n_steps` training batches, replaces each selected weight W by the nearest
    (semi-)orthonormal matrix (conv kernels as (out, in*k*k) matrices) and logs the mean orthogonality
    error ||W W^T - I||_F over the selected layers before and after (`orthonormal/error_before`,
    `orthonormal/error_after`). At the end of validation and testing it logs `val/orthogonality_error`
    and `test/orthogonality_error`. With `project` false it only measures: the baseline of a comparison."""

    def __init__(
        self,
        pattern: str | None = None,
        module_types: list[str] = ("Linear",),
        method: Literal["svd", "newton_schulz"] = "svd",
        every_n_steps: int = 1,
        newton_schulz_steps: int = 30,
        project: bool = True,
    ) -> None:
        """
        Args:
            pattern: regex searched in each module's qualified name (e.g. "backbone\\.[13]$"); None: all modules
                of the chosen types.
            module_types: names of torch.nn layer classes to select (Linear, Conv2d, ...); empty: any module
                with a `weight` matched by `pattern`.
            method: "svd" (exact polar factor) or "newton_schulz" (iterative, matmuls only).
            every_n_steps: project after every n-th training batch.
            newton_schulz_steps: iterations of the Newton-Schulz method.
            project: false to only measure and log the orthogonality error.
        """
        unknown = [name for name in module_types if not isinstance(getattr(nn, name, None), type)]
        if unknown:
            raise ValueError(
                f"OrthonormalProjection module_types {unknown} are not torch.nn layers; e.g. Linear, Conv2d"
            )
        if method not in ("svd", "newton_schulz"):
            raise ValueError(f"OrthonormalProjection method must be svd or newton_schulz, got {method!r}")
        if every_n_steps < 1:
            raise ValueError(f"OrthonormalProjection every_n_steps must be at least 1, got {every_n_steps}")
        self.pattern, self.method, self.project = pattern, method, project
        self.module_types = tuple(getattr(nn, name) for name in module_types)
        self.every_n_steps, self.newton_schulz_steps = every_n_steps, newton_schulz_steps
        self._batches = 0

    def selected(self, model: nn.Module) -> dict[str, nn.Module]:
        """The modules this callback acts on, by qualified name."""
        chosen = {}
        for name, module in model.named_modules():
            if not isinstance(getattr(module, "weight", None), torch.Tensor):
                continue
            if self.module_types and not isinstance(module, self.module_types):
                continue
            if self.pattern is None or re.search(self.pattern, name):
                chosen[name] = module
        return chosen

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        chosen = self.selected(pl_module)
        if not chosen:
            raise ValueError(
                f"OrthonormalProjection selects no layer (pattern {self.pattern!r}, types "
                f"{[t.__name__ for t in self.module_types]}); check the names with --print_config or the model summary"
            )
        parametrized = [name for name, module in chosen.items() if parametrize.is_parametrized(module, "weight")]
        if self.project and parametrized:
            raise ValueError(
                f"OrthonormalProjection cannot project {parametrized[0]}: its weight is computed by a parametrization; "
                "drop --model.orthogonal_pattern or set the callback's project false"
            )

    @torch.no_grad()
    def mean_error(self, pl_module: L.LightningModule) -> torch.Tensor:
        return torch.stack([orthogonality_error(m.weight) for m in self.selected(pl_module).values()]).mean()

    @torch.no_grad()
    def project_(self, pl_module: L.LightningModule) -> None:
        for module in self.selected(pl_module).values():
            matrix = as_matrix(module.weight).float()
            if self.method == "svd":
                nearest = polar_svd(matrix)
            else:
                nearest = polar_newton_schulz(matrix, self.newton_schulz_steps)
            module.weight.copy_(nearest.reshape(module.weight.shape))

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._batches += 1
        if self._batches % self.every_n_steps:
            return
        pl_module.log("orthonormal/error_before", self.mean_error(pl_module))
        if self.project:
            self.project_(pl_module)
            pl_module.log("orthonormal/error_after", self.mean_error(pl_module))

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("val/orthogonality_error", self.mean_error(pl_module))

    @torch.no_grad()
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("test/orthogonality_error", self.mean_error(pl_module))

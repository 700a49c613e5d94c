"""FLOP/s of a training run: how many FLOPs one training step costs (counted, not estimated) and how many the
machine can do per second (measured here, in this process, rather than read from a data sheet: a CPU has no
sheet, and a shared or throttled GPU does not reach its own), so that a run can report its share of the peak.

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts: matmul-like operations only (mm, addmm, bmm,
convolutions, attention), 2 per multiply-add. Element-wise work (activations, norms, the optimiser) is free by
this count, as in the usual MFU figures (nanoGPT, PaLM appendix B)."""

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

# Precision name -> the dtype its matmuls run in (what Lightning's `trainer.precision` says, e.g. "bf16-mixed").
PRECISION_DTYPES = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def _count_cpu_attention() -> None:
    """FlopCounterMode knows the CUDA attention kernels but not the CPU one that `F.scaled_dot_product_attention`
    picks on a CPU (`_scaled_dot_product_flash_attention_for_cpu`): without these formulas a transformer's
    attention would count as free there. They are the CUDA kernels' formulas (the same shapes, the same maths)."""
    aten = torch.ops.aten
    forward = aten._scaled_dot_product_flash_attention_for_cpu
    backward = aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(forward)
        def cpu_attention(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if backward not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(backward)
        def cpu_attention_backward(
            grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any
        ) -> int:
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_count_cpu_attention()


def _count_sparse_products() -> None:
    """FlopCounterMode counts a sparse-by-dense matrix product (the GCN's aggregation, `torch.sparse.mm` on a CSR
    adjacency) as if the sparse matrix were dense: 2 m k n for an (m, k) by (k, n) product, where only its nnz
    stored values are multiplied, 2 nnz n. Products of two dense matrices keep torch's own formula."""
    mm = torch.ops.aten.mm
    dense_formula = flop_counter.flop_registry[mm]
    if getattr(dense_formula, "counts_sparse", False):
        return

    def mm_flops(a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> int:
        if a.layout != torch.strided:
            return 2 * a._nnz() * b.shape[1]
        if b.layout != torch.strided:
            return 2 * b._nnz() * a.shape[0]
        return dense_formula(a, b, *args, **kwargs)

    mm_flops.counts_sparse = True
    flop_counter.flop_registry[mm] = mm_flops


_count_sparse_products()


@contextmanager
def barebones(model: L.LightningModule) -> Iterator[None]:
    """The model attached to a barebones Trainer, Lightning's raw-speed mode, in which `self.log` does nothing
    (it warns once, silenced here) while `self.trainer` still answers (a model may read log_every_n_steps): so
    training_step runs alone, without the loop's logging bookkeeping. Its own trainer is attached again after."""
    trainer = model.trainer
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # a barebones Trainer lists at length what it switches off
    try:
        model.trainer = L.Trainer(barebones=True, accelerator=trainer.accelerator, devices=1)
    finally:
        lightning_log.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*self.log.* but `Trainer.barebones=True.` is configured.*")
            yield
    finally:
        model.trainer = trainer


def step_loss(model: L.LightningModule, batch: Any) -> torch.Tensor:
    """The loss of `model.training_step(batch, 0)`, which may return it alone or as a dict's "loss"."""
    loss = model.training_step(batch, 0)
    return loss["loss"] if isinstance(loss, dict) else loss


def training_step_flops(model: L.LightningModule, batch: Any) -> int | None:
    """The FLOPs of one training step on `batch` (already on the model's device): forward and backward of
    `training_step`'s loss, in the trainer's precision, under a barebones Trainer. None for a model with manual
    optimisation (PPO): its training_step runs its own backward passes and optimiser steps, there is no one loss.

    Counting runs the step for real, so what it changes is put back: the parameters' gradients, the buffers (a
    BatchNorm's running statistics), every module's train/eval mode and the random generators (dropout), so that
    a run measured after the count is the run it would have been."""
    if not model.automatic_optimization:
        return None
    precision = model.trainer.precision_plugin  # the run's own, read before barebones() swaps the trainer
    parameters = list(model.parameters())
    grads = [p.grad for p in parameters]
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    modes = {module: module.training for module in model.modules()}
    cuda = model.device.type == "cuda"
    rng_devices = [torch.cuda.current_device() if model.device.index is None else model.device.index] if cuda else []
    counter = FlopCounterMode(display=False)
    try:
        with torch.random.fork_rng(devices=rng_devices), barebones(model):
            for p in parameters:
                p.grad = None
            model.train()
            with counter:
                with precision.train_step_context():
                    loss = step_loss(model, precision.convert_input(batch))
                loss.backward()
    finally:
        for p, grad in zip(parameters, grads, strict=True):
            p.grad = grad
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        for module, training in modes.items():
            module.train(training)
    return counter.get_total_flops()


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls of a Lightning precision ("32-true", "bf16-mixed", "16-mixed", ...) run in."""
    return PRECISION_DTYPES.get(str(precision).split("-")[0], torch.float32)


def matmul_peak_flops(
    dtype: torch.dtype, size: int = 1024, seconds: float = 2.0, device: torch.device | str = "cpu"
) -> float:
    """The FLOP/s of repeated `size x size` matmuls (2 * size**3 FLOPs each) in `dtype` on `device`, timed for
    about `seconds` after a warm-up of a quarter of that (CUDA's first matmul loads its kernels, a CPU's clock
    ramps up). One size, 1024 by default: large enough to keep every core busy, about the width of the layers
    the models here run. On CUDA the fp32 figure follows `torch.set_float32_matmul_precision` (TF32 on "high"),
    as the model's own fp32 matmuls do."""
    if size < 1 or not seconds > 0:
        raise ValueError(f"the peak needs a positive size and time, got size={size}, seconds={seconds}")
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)  # its own: the global generators stay untouched
    a, b = (torch.rand(size, size, generator=generator, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    timed_matmuls(lambda: torch.mm(a, b, out=out), sync, seconds / 4)
    count, elapsed = timed_matmuls(lambda: torch.mm(a, b, out=out), sync, seconds)
    return 2 * size**3 * count / elapsed


def timed_matmuls(matmul: Callable[[], Any], sync: Callable[[], None], seconds: float) -> tuple[int, float]:
    """Run `matmul` in bursts until `seconds` have passed; the number run and the seconds they took. The clock is
    read after a device sync at the end of each burst, and a burst doubles (within the time left) so that the
    syncs cost little on a GPU and the run overshoots `seconds` by little on a CPU."""
    count, burst = 0, 1
    started = time.perf_counter()
    while True:
        for _ in range(burst):
            matmul()
        sync()
        count += burst
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count, elapsed
        burst = max(1, min(2 * burst, int((seconds - elapsed) * count / elapsed)))

"""FLOP/s of a training run: how many FLOPs one training step costs (counted, not estimated) and how many the
machine can do per second (measured here, in this process, rather than read from a data sheet: a CPU has no
sheet, and a shared or throttled GPU does not reach its own), so that a run can report its share of the peak.

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts: matmul-like operations only (mm, addmm, bmm,
convolutions, attention), 2 per multiply-add. Element-wise work (activations, norms, the optimiser) is free by
this count, as in the usual MFU figures (nanoGPT, PaLM appendix B)."""

import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import lightning as L
import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
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


# A matrix product as a batch of GEMMs: (batch, m, k, n), an (m, k) by (k, n) product `batch` times.
Gemm = tuple[int, int, int, int]


def gemms_of(func: Any, args: tuple, out: Any) -> list[Gemm]:
    """The GEMMs that one forward matmul-like aten call amounts to (none for any other call, and for a sparse
    operand, whose product is no GEMM). A convolution is the GEMM of its im2col form: (output positions, inputs
    per output: C_in / groups x kernel area, C_out / groups) per group (a transposed one, col2im: input positions,
    C_in / groups, C_out / groups x kernel area); a fused attention is its two products per batch and head,
    Q K^T, (L, E) by (E, S), and softmax V, (L, S) by (S, E_v)."""
    aten = torch.ops.aten
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if any(t.layout != torch.strided for t in tensors):
        return []
    if func in (aten.mm.default, aten.addmm.default):
        a, b = args[:2] if func is aten.mm.default else args[1:3]
        return [(1, a.shape[0], a.shape[1], b.shape[1])]
    if func in (aten.bmm.default, aten.baddbmm.default):
        a, b = args[:2] if func is aten.bmm.default else args[1:3]
        return [(a.shape[0], a.shape[1], a.shape[2], b.shape[2])]
    if func is aten.convolution.default:
        x, weight, transposed, groups = args[0], args[1], args[6], args[8]
        kernel_area = weight[0, 0].numel()
        if transposed:  # weight (C_in, C_out / groups, k...)
            return [(groups, x.shape[0] * x[0, 0].numel(), weight.shape[0] // groups, weight.shape[1] * kernel_area)]
        return [(groups, out.shape[0] * out[0, 0].numel(), weight.shape[1] * kernel_area, weight.shape[0] // groups)]
    if "scaled_dot_product" in func.__name__ and "backward" not in func.__name__:
        q, k, v = args[:3]
        heads, length, width, keys = q.shape[:-2].numel(), q.shape[-2], q.shape[-1], k.shape[-2]
        return [(heads, length, width, keys), (heads, length, keys, v.shape[-1])]
    return []


class GemmShapes(TorchDispatchMode):
    """Records the FLOPs of the matrix products run under it, by GEMM shape (`gemms_of`): what a peak "at the
    model's own sizes" is timed on (`shape_peak_flops`)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops: Counter[Gemm] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for gemm in gemms_of(func, args, out):
            batch, m, k, n = gemm
            self.flops[gemm] += 2 * batch * m * k * n
        return out


def training_step_flops(model: L.LightningModule, batch: Any, shapes: GemmShapes | None = None) -> int | None:
    """The FLOPs of one training step on `batch` (already on the model's device): forward and backward of
    `training_step`'s loss, in the trainer's precision, under a barebones Trainer. None for a model with manual
    optimisation (PPO): its training_step runs its own backward passes and optimiser steps, there is no one loss.

    Counting runs the step for real, so what it changes is put back: the parameters' gradients, the buffers (a
    BatchNorm's running statistics), every module's train/eval mode and the random generators (dropout), so that
    a run measured after the count is the run it would have been. With `shapes`, the forward pass's matrix
    products are recorded in it by shape (the backward pass runs the same products' transposes, of the same
    dimensions, at twice the FLOPs, so the forward's mix of sizes stands for the step's)."""
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
                with precision.train_step_context(), shapes if shapes is not None else nullcontext():
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


def shape_peak_flops(
    shapes: Counter[Gemm],
    dtype: torch.dtype,
    seconds: float = 0.5,
    device: torch.device | str = "cpu",
    coverage: float = 0.9,
    max_shapes: int = 8,
    max_rows: int = 32768,
) -> float:
    """The machine's matmul FLOP/s at the model's own GEMM shapes (`GemmShapes`), as the step mixes them: the
    largest shapes that together hold `coverage` of the FLOPs (at most `max_shapes`), each timed as a batched
    `torch.bmm` in `dtype` for `seconds`, combined as the time their FLOPs take, sum(f) / sum(f / rate). A GEMM
    of 16 output columns runs far below a 1024 x 1024 one on a CPU, so this is the ceiling for a model made of
    small products (a convolution of 16 channels), where `matmul_peak_flops` is that of the hardware. The long
    dimension m is capped at `max_rows` (and the batch at what keeps m x batch under it): a GEMM's rate is set
    by its short dimensions once m is in the thousands."""
    if not shapes:
        raise ValueError("the shape peak needs at least one recorded matrix product")
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    total, covered, time_taken = sum(shapes.values()), 0, 0.0
    for (batch, m, k, n), flops in shapes.most_common(max_shapes):
        m = min(m, max_rows)
        batch = max(1, min(batch, max_rows // m))
        a = torch.rand(batch, m, k, generator=generator, device=device, dtype=dtype)
        b = torch.rand(batch, k, n, generator=generator, device=device, dtype=dtype)
        out = torch.empty(batch, m, n, device=device, dtype=dtype)
        timed_matmuls(lambda a=a, b=b, out=out: torch.bmm(a, b, out=out), sync, seconds / 4)
        count, elapsed = timed_matmuls(lambda a=a, b=b, out=out: torch.bmm(a, b, out=out), sync, seconds)
        rate = 2 * batch * m * k * n * count / elapsed
        covered += flops
        time_taken += flops / rate
        if covered >= coverage * total:
            break
    return covered / time_taken


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

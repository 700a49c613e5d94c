"""NT-Xent (SimCLR, eq. 1) against a loop over the paper's Algorithm 1, its closed form on orthogonal pairs, and the
global batch of two gloo processes against one process."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.self_supervised.nt_xent import nt_xent_loss


def algorithm_1(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Algorithm 1 written out: the views of image k are z_{2k-1}, z_{2k}; s_ij their cosine similarity;
    l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t); the loss is the mean of l(2k-1, 2k) + l(2k, 2k-1)."""
    z = [v for pair in zip(z1, z2, strict=True) for v in pair]  # z_1, z_2 (image 1), z_3, z_4 (image 2), ...

    def s(i, j):
        return torch.dot(z[i], z[j]) / (z[i].norm() * z[j].norm())

    def ell(i, j):
        denominator = sum(torch.exp(s(i, k) / temperature) for k in range(len(z)) if k != i)
        return -torch.log(torch.exp(s(i, j) / temperature) / denominator)

    n = len(z1)
    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("dim", [2, 5, 16])
@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_is_algorithm_1_with_its_gradients(n, dim, temperature):
    generator = torch.Generator().manual_seed(n * 100 + dim)
    z1, z2 = torch.randn(2, n, dim, generator=generator, dtype=torch.float64)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    got = nt_xent_loss(z1.float(), z2.float(), temperature)
    want = algorithm_1(z1, z2, temperature)
    # The fp32 loss: a log-sum-exp of at most 2N - 1 = 15 terms of size <= e^(1/0.1) is good to a few float32 ulps
    # of its value (<= 10): 1e-5 relative covers it with room.
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got_grads = torch.autograd.grad(got, (z1, z2))
    want_grads = torch.autograd.grad(want, (z1, z2))
    for g, w in zip(got_grads, want_grads, strict=True):
        # The same sums in fp32, differentiated: errors of the loss's order, on gradients of size <= 1 / t.
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    if n > 1:  # with one image there are no negatives: the loss is 0 and flat
        assert all(g.abs().sum() > 0 for g in got_grads)  # both views receive a gradient


def test_aligned_orthogonal_pairs_have_the_closed_form():
    """z1 = z2 = the first N basis vectors: each view's positive has s = 1, its 2N - 2 negatives s = 0, so every
    l = -log(e^(1/t) / (e^(1/t) + 2N - 2))."""
    n, t = 4, 0.5
    z = torch.eye(8)[:n] * 3.0  # the cosine does not see the length
    want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(want, rel=1e-6)  # fp32 of exp(2) and a log


def test_mismatched_views_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.zeros(4, 3), torch.zeros(5, 3))


# --- Two gloo processes, half the batch each, against one process with all of it ---------------------------------
N, D_IN, D_OUT, T = 8, 6, 4, 0.5


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views' inputs (N, D_IN) and the weights of a linear 'network' (D_IN, D_OUT), the same in every process."""
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(N, D_IN, generator=generator),
        torch.randn(N, D_IN, generator=generator),
        torch.randn(D_IN, D_OUT, generator=generator),
    )


def loss_and_gradient(x1: torch.Tensor, x2: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights = weights.clone().requires_grad_(True)
    loss = nt_xent_loss(x1 @ weights, x2 @ weights, T)
    loss.backward()
    return loss.detach(), weights.grad


def half_batch_worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x1, x2, weights = data()
    share = slice(rank * N // world, (rank + 1) * N // world)
    loss, grad = loss_and_gradient(x1[share], x2[share], weights)
    # What DDP does with the parameters' gradients (and what the logged loss is): the mean over processes.
    for value in (loss, grad):
        dist.all_reduce(value)
        value /= world
    if rank == 0:
        torch.save({"loss": loss, "grad": grad}, out)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_with_half_the_batch_each_give_the_one_process_loss_and_gradients(tmp_path):
    out = tmp_path / "two_processes.pt"
    mp.spawn(half_batch_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    want_loss, want_grad = loss_and_gradient(*data())
    # The same terms summed in another order in fp32: a few ulps of values of order 1.
    torch.testing.assert_close(got["loss"], want_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["grad"], want_grad, rtol=1e-5, atol=1e-6)

"""OrthonormalProjection: the projection is the nearest (semi-)orthonormal matrix, it touches only the selected
layers, and it logs the orthogonality error before and after."""

from functools import partial

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.orthonormal import OrthonormalProjection, orthogonality_error, polar_newton_schulz, polar_svd
from lightning_modules.blocks.small_nets import MLP
from lightning_modules.classifiers.classifier import ImageClassifier


def tiny_loader(n: int = 32) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=8)


def quiet_trainer(callbacks: list, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, **kwargs,
    )  # fmt: skip


def test_polar_factor_is_the_nearest_orthonormal_matrix():
    torch.manual_seed(0)
    w = torch.randn(6, 10, dtype=torch.float64)
    q = polar_svd(w)
    torch.testing.assert_close(q @ q.T, torch.eye(6, dtype=torch.float64))
    # Nearer to W than other matrices with orthonormal rows: the QR factor and random ones.
    others = [torch.linalg.qr(w.T).Q.T] + [
        torch.linalg.qr(torch.randn(10, 6, dtype=torch.float64)).Q.T for _ in range(20)
    ]
    assert all(torch.dist(w, q) < torch.dist(w, other) for other in others)
    # Newton-Schulz converges to the same factor, on both the wide and the tall side.
    torch.testing.assert_close(polar_newton_schulz(w, steps=60), q)
    torch.testing.assert_close(polar_newton_schulz(w.T, steps=60), q.T)


def test_orthogonality_error_is_frobenius_norm_of_gram_minus_identity():
    w = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
    assert orthogonality_error(w) == pytest.approx((0 + 3**2 + 8**2) ** 0.5)
    tall = torch.cat([torch.eye(3), torch.zeros(2, 3)])  # (5, 3): orthonormal columns
    assert orthogonality_error(tall) == pytest.approx(0.0)


@pytest.mark.parametrize("method", ["svd", "newton_schulz"])
def test_projection_makes_selected_weights_orthonormal_and_leaves_the_rest(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 30), nn.Conv2d(3, 4, 3), nn.Linear(30, 5))
    before = {name: p.clone() for name, p in model.named_parameters()}
    callback = OrthonormalProjection(pattern=r"^[0-3]$", module_types=["Linear", "Conv2d"], method=method)
    callback.project_(model)
    wide, tall, conv = model[0].weight, model[2].weight, model[3].weight.reshape(4, 27)
    torch.testing.assert_close(wide @ wide.T, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(tall.T @ tall, torch.eye(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(conv @ conv.T, torch.eye(4), atol=1e-5, rtol=0)
    for name in ("0.bias", "2.bias", "3.bias", "4.weight", "4.bias"):  # biases and the unmatched layer
        assert torch.equal(model.get_parameter(name), before[name]), name


def test_callback_in_training_projects_after_each_step_and_logs_errors():
    torch.manual_seed(0)
    model = ImageClassifier(partial(MLP, widths=[32, 16]), image_shape=(1, 8, 8), lr=0.05)
    head = model.backbone[5].weight.detach().clone()
    callback = OrthonormalProjection(pattern=r"backbone\.[13]$")
    trainer = quiet_trainer([callback], max_steps=4, log_every_n_steps=1, num_sanity_val_steps=0)
    trainer.fit(model, tiny_loader(), tiny_loader())
    for index in (1, 3):
        w = model.backbone[index].weight
        torch.testing.assert_close(w @ w.T, torch.eye(len(w)), atol=1e-5, rtol=0)
    assert not torch.equal(model.backbone[5].weight, head)  # trained, but not projected
    assert orthogonality_error(model.backbone[5].weight) > 0.1
    logged = trainer.callback_metrics
    assert logged["orthonormal/error_after"] < 1e-4 < logged["orthonormal/error_before"]
    (results,) = trainer.test(model, tiny_loader(), verbose=False)
    assert results["test/orthogonality_error"] < 1e-4


def test_measure_only_mode_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4))
    weight = model[0].weight.detach().clone()
    callback = OrthonormalProjection(project=False)
    assert callback.mean_error(model) == pytest.approx(float(orthogonality_error(weight)))
    assert torch.equal(model[0].weight, weight)


def test_bad_selections_are_clear_errors():
    model = ImageClassifier(partial(MLP, widths=[16]), image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="selects no layer"):
        OrthonormalProjection(pattern="nothing").on_fit_start(None, model)
    with pytest.raises(ValueError, match="not torch.nn layers"):
        OrthonormalProjection(module_types=["Lineer"])
    parametrized = ImageClassifier(partial(MLP, widths=[16]), image_shape=(1, 8, 8), orthogonal_pattern="1$")
    with pytest.raises(ValueError, match="parametrization"):
        OrthonormalProjection(pattern="1$").on_fit_start(None, parametrized)
    OrthonormalProjection(pattern="1$", project=False).on_fit_start(None, parametrized)  # measuring is fine


def test_svd_failure_falls_back_to_newton_schulz(monkeypatch):
    # LAPACK's SVD can fail to converge on nearly orthonormal float32 matrices: the projection must still work.
    torch.manual_seed(0)
    nearly = polar_svd(torch.randn(16, 40)) + 1e-4 * torch.randn(16, 40)

    def failing_svd(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing_svd)
    q = polar_svd(nearly)
    torch.testing.assert_close(q @ q.T, torch.eye(16), atol=1e-5, rtol=0)

"""A new family is its module, its config and its tests: registering one touches no script and no other
family. This is the example docs/architecture.md walks through, run for real."""

import textwrap

import fit

MODULE = '''
"""Multinomial logistic regression: the smallest image classifier."""

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


def softmax_regression_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log softmax(W x + b)[label], averaged over the batch."""
    return F.cross_entropy(logits, labels)


class SoftmaxRegression(L.LightningModule):
    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(math.prod(image_shape), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = softmax_regression_loss(self(images), labels)
        self.log("train/loss", loss)
        return loss

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.log("test/acc", (self(images).argmax(dim=1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
'''

CONFIG = """
model:
  class_path: softmax_regression.SoftmaxRegression
  init_args:
    lr: 0.05
data:
  class_path: datamodules.images.MNISTDataModule
  init_args:
    batch_size: 32
trainer:
  max_epochs: 1
"""


def test_a_family_registers_by_its_config_alone(tmp_path, monkeypatch, capsys, data_root):
    package = tmp_path / "family"
    package.mkdir()
    (package / "softmax_regression.py").write_text(textwrap.dedent(MODULE))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "softmax_regression.yaml").write_text(CONFIG)
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.setattr("lightning_modules.registry.CONFIGS", configs)
    monkeypatch.chdir(tmp_path)

    code = fit.main(["--model", "softmax_regression", "--trainer.fast_dev_run", "true", "--data.root", str(data_root)])

    out = capsys.readouterr().out
    assert code == 0
    assert "softmax_regression on MNISTDataModule" in out and "test/acc = " in out
    # the image shape and class count came from the DataModule through the CLI's links
    assert "models: softmax_regression;" in fit.catalogue()

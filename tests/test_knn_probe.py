"""The kNN and linear-probe evaluation: the weighted votes on hand-made embeddings, the frozen backbone, and the
callback's refusal of a model without `embed`."""

import math

import lightning as L
import pytest
import torch

from callbacks.knn_probe import KNNProbe
from datamodules.images import DigitsDataModule
from lightning_modules.blocks.resnet import ResNet
from lightning_modules.representation import knn_accuracy, linear_probe_accuracy, split_features, weighted_knn_scores
from lightning_modules.self_supervised.simclr import SimCLR


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_votes_are_the_neighbours_weights_exp_similarity_over_t():
    """Bank at 0, 30, 90 and 180 degrees (classes 0, 1, 1, 2), query at 0 degrees, k = 3: the neighbours have
    cosines 1, cos 30 and 0, so class 0 gets e^(1/t), class 1 e^(cos 30 / t) + e^0, class 2 (not among the 3)
    nothing. The bank's lengths do not matter (cosine similarity)."""
    bank = torch.tensor([unit(0), unit(30), unit(90), unit(180)]) * torch.tensor([[1.0], [2.0], [0.5], [3.0]])
    labels = torch.tensor([0, 1, 1, 2])
    t = 0.1
    votes = weighted_knn_scores(torch.tensor([unit(0)]), bank, labels, num_classes=3, k=3, temperature=t)
    want = torch.tensor([[math.exp(1 / t), math.exp(math.cos(math.radians(30)) / t) + 1.0, 0.0]])
    torch.testing.assert_close(votes, want, rtol=1e-5, atol=0)  # fp32 exp of arguments <= 10: a few ulps


def test_weights_let_one_close_neighbour_outvote_two_far_ones():
    """One neighbour of class 0 at 10 degrees, two of class 1 at 60: at t = 0.1 the close one wins
    (e^9.85 > 2 e^5), at t = 10 the count does (e^0.0985 < 2 e^0.05)."""
    bank = torch.tensor([unit(10), unit(60), unit(-60)])
    labels = torch.tensor([0, 1, 1])
    test = (torch.tensor([unit(0)]), torch.tensor([0]))
    assert knn_accuracy((bank, labels), test, k=3, temperature=0.1) == 1.0
    assert knn_accuracy((bank, labels), test, k=3, temperature=10.0) == 0.0


def test_k_larger_than_the_bank_uses_the_whole_bank():
    bank, labels = torch.tensor([unit(0), unit(90)]), torch.tensor([0, 1])
    votes = weighted_knn_scores(torch.tensor([unit(0)]), bank, labels, num_classes=2, k=200, temperature=1.0)
    torch.testing.assert_close(votes, torch.tensor([[math.e, 1.0]]))


def test_linear_probe_separates_separable_features():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    features = torch.randn(200, 8, generator=generator) * 0.1 + torch.eye(8)[labels] * 3  # 4 far-apart clusters
    assert linear_probe_accuracy((features[:150], labels[:150]), (features[150:], labels[150:])) == 1.0


def test_features_come_from_the_frozen_model_in_eval_mode_and_leave_it_untouched():
    """Embedding the splits for the kNN and the probe reads BatchNorm's running statistics (eval mode) and
    changes neither the weights nor those statistics; afterwards the model is in train mode again."""
    torch.manual_seed(0)
    model = SimCLR(image_shape=(1, 8, 8), backbone=lambda shape, n: ResNet(shape, n, depth=8))
    model.backbone(torch.rand(32, 1, 8, 8))  # move the running statistics off their initial values
    before = {name: value.clone() for name, value in model.state_dict().items()}
    data = DigitsDataModule(batch_size=64)
    train = split_features(model, data, "train", 200, batch_size=64, device=torch.device("cpu"))
    test = split_features(model, data, "test", None, batch_size=64, device=torch.device("cpu"))
    linear_probe_accuracy(train, test)
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert all(module.training for module in model.modules())
    images = data.batch("train", 200)[0]
    with torch.no_grad():
        want = model.eval().embed(images)  # the running statistics, not the batch's
    torch.testing.assert_close(train[0], want, rtol=0, atol=0)
    assert torch.equal(train[1], data.batch("train", 200)[1]) and len(test[0]) == len(data.dataset("test"))


def test_the_callback_refuses_a_model_without_embed_in_one_line():
    class Bare(L.LightningModule):
        pass

    with pytest.raises(
        ValueError, match=r"^Bare cannot be used for the kNN and linear-probe evaluation: it has no embed\(\)"
    ):
        KNNProbe().setup(None, Bare(), "fit")


def test_the_callback_refuses_bad_options():
    with pytest.raises(ValueError, match="every_n_epochs >= 1"):
        KNNProbe(every_n_epochs=0)

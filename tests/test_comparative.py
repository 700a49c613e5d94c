"""The same/different network: the pair sampler's labels and ratio, the pair score's symmetry, classification by
comparison on hand-made embeddings, and the model through fit.py."""

import pytest
import torch

from lightning_modules.experiments.comparative import (
    ComparativeNetwork,
    classify_by_comparison,
    first_per_class,
    sample_pairs,
)


def test_pairs_are_half_same_half_different_with_true_labels():
    labels = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
    first, second, same = sample_pairs(labels, torch.Generator().manual_seed(1))
    assert len(first) == len(second) == 64
    assert torch.equal(same, labels[first] == labels[second])
    assert same[:32].all() and not same[32:].any()  # exactly half and half
    assert (first[:32] != second[:32]).all()  # another example of the class, not the anchor itself


def test_a_lonely_anchor_pairs_with_itself_and_one_class_batches_tell_the_truth():
    labels = torch.tensor([0, 1, 1, 1])  # class 0 has one example
    lonely_pairs = 0
    for seed in range(20):
        first, second, same = sample_pairs(labels, torch.Generator().manual_seed(seed))
        assert same[:2].all() and not same[2:].any()
        lonely = first[:2] == 0
        assert torch.equal(second[:2][lonely], first[:2][lonely])
        lonely_pairs += int(lonely.sum())
    assert lonely_pairs > 0  # the case was met (each seed's 2 anchors miss example 0 with odds (3/4)^2)
    first, second, same = sample_pairs(torch.zeros(6, dtype=torch.long), torch.Generator().manual_seed(0))
    assert same.all()


def test_the_pair_score_is_symmetric():
    torch.manual_seed(0)
    model = ComparativeNetwork(image_shape=(1, 4, 4), num_classes=3, embedding_dim=8, hidden=16)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    # |a - b| = |b - a| and a * b = b * a exactly in floating point: the same bits in, the same bits out.
    assert torch.equal(model.pair_logit(a, b), model.pair_logit(b, a))
    assert not torch.equal(model.pair_logit(a, b), model.pair_logit(a, a))


def negative_distance(queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    return -torch.cdist(queries, support)


@pytest.mark.parametrize("k", [1, 5])
def test_classification_by_comparison_picks_the_nearest_class(k):
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    support_labels = torch.arange(3).repeat_interleave(k)
    support = centres[support_labels] + torch.randn(3 * k, 2, generator=generator)
    query_labels = torch.tensor([2, 0, 1, 1, 0, 2])
    queries = centres[query_labels] + torch.randn(6, 2, generator=generator)
    predicted = classify_by_comparison(negative_distance, queries, support, support_labels, num_classes=4)
    assert torch.equal(predicted, query_labels)  # class 3 has no examples and never wins


def test_first_per_class():
    labels = torch.tensor([2, 0, 2, 1, 2, 0])
    assert first_per_class(labels, 2, 3).tolist() == [1, 5, 3, 0, 2]


def test_fast_dev_run(data_root, fit_in_process):
    result = fit_in_process(
        "--model", "comparative", "--trainer.fast_dev_run", "true", "--data.root", str(data_root),
        "--data.batch_size", "16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/pair_acc = " in result.stdout


def test_evaluate_reports_each_k(data_root):
    from datamodules.images import MNISTDataModule

    datamodule = MNISTDataModule(root=str(data_root), batch_size=16, download=False, fallback=False)
    datamodule.prepare_data()
    datamodule.setup("test")
    model = ComparativeNetwork(image_shape=(1, 28, 28), num_classes=10).eval()
    with torch.no_grad():
        figures = model.evaluate(datamodule)
    assert list(figures) == ["compare_acc_k1", "compare_acc_k5", "compare_acc_k20"]

"""The char-level GPT: causality, the key/value cache, its loss, its optimiser, its callback and fit.py."""

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks.text_samples import TextSamples
from datamodules import TextDataModule
from lightning_modules.blocks.transformer import KVCache, rotary_angles, rotate
from lightning_modules.language.gpt import GPT, next_token_nll
from lightning_modules.protocols import CONTRACTS, members

TINY = dict(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


def tiny_gpt(vocab_size: int = 11, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=vocab_size, **{**TINY, **overrides}).eval()


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_changing_token_t_never_changes_earlier_logits(position):
    model = tiny_gpt(position=position)
    idx = torch.randint(0, 11, (3, 16))
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 11
        before, after = model(idx), model(changed)
        torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
        assert not torch.allclose(after[:, t], before[:, t])  # position t itself does see its token


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_cached_logits_equal_full_recomputation(position):
    model = tiny_gpt(position=position).double()
    idx = torch.randint(0, 11, (2, 16))
    full = model(idx)
    cache = KVCache(TINY["n_layer"])
    chunks = [model.transformer(idx[:, :5], cache)]  # a prompt at once, then a chunk of 3, then one by one
    chunks.append(model.transformer(idx[:, 5:8], cache))
    chunks += [model.transformer(idx[:, t : t + 1], cache) for t in range(8, 16)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full)


def test_rotary_scores_depend_on_relative_position_only():
    """q_m . k_n after rotation equals the same pair shifted by s (Su et al. 2021, eq. 16), and the rotation
    keeps lengths; checked against a 2-D rotation matrix built by hand for the first pair."""
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    positions = torch.arange(20)
    cos, sin = (a.double() for a in rotary_angles(positions, 8))

    def score(m: int, n: int) -> torch.Tensor:
        return rotate(q, cos[m], sin[m]) @ rotate(k, cos[n], sin[n])

    torch.testing.assert_close(score(3, 1), score(15, 13))
    torch.testing.assert_close(score(0, 7), score(9, 16))
    torch.testing.assert_close(rotate(q, cos[5], sin[5]).norm(), q.norm())
    angle = torch.tensor(5.0, dtype=torch.float64)  # theta_0 = 1, so the first pair turns by m radians
    turn = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    torch.testing.assert_close(rotate(q, cos[5], sin[5])[:2], turn @ q[:2])


def test_no_helper_takes_a_contract_name():
    taken = {name for protocol in CONTRACTS for name in members(protocol)}
    assert taken & set(dir(tiny_gpt())) == {"generate", "count_throughput", "throughput_unit", "benchmark_metric"}


def test_position_flag_is_checked():
    assert tiny_gpt(position="rope").transformer.position_embedding is None
    with pytest.raises(ValueError, match="learned or rope"):
        tiny_gpt(position="sinusoid")
    with pytest.raises(ValueError, match="even head width"):
        GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=6, position="rope")


def test_greedy_generation_with_cache_equals_recomputation():
    model = tiny_gpt().double()
    prompt = torch.randint(0, 11, (2, 3))
    with_cache = model.generate(prompt, 13, temperature=0, use_cache=True)
    without = model.generate(prompt, 13, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 16) and torch.equal(with_cache[:, :3], prompt)
    assert torch.equal(with_cache, without)


def test_generation_runs_past_the_context_and_honours_top_k():
    model = tiny_gpt()
    tokens = model.generate(torch.zeros(1, 1, dtype=torch.long), 40, temperature=1.0, top_k=1)
    assert tokens.shape == (1, 41)
    # top_k=1 is greedy, whatever the temperature; within the context the cache changes nothing.
    assert torch.equal(tokens[:, :16], model.generate(torch.zeros(1, 1, dtype=torch.long), 15, temperature=0))
    generator = torch.Generator().manual_seed(1)
    state = torch.get_rng_state()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 5, generator=generator)
    assert torch.equal(torch.get_rng_state(), state)  # sampling with a generator leaves the global one alone


def test_next_token_nll_against_hand_computation():
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    want = -sum(log_probs[b, t, targets[b, t]] for b in range(2) for t in range(5)) / 10
    torch.testing.assert_close(next_token_nll(logits, targets), want)


def test_loss_at_initialisation_is_about_log_vocab():
    model = tiny_gpt(vocab_size=65, block_size=64, n_embd=128, n_head=4)
    idx = torch.randint(0, 65, (8, 65))
    loss = next_token_nll(model(idx[:, :-1]), idx[:, 1:])
    assert abs(loss.item() - math.log(65)) < 0.1


def test_weight_decay_on_matrices_only_and_tied_head():
    model = tiny_gpt(bias=True)
    model._trainer = SimpleNamespace(max_steps=10)  # what configure_optimizers reads from the Trainer
    optimizer = model.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert model.transformer.head.weight is model.transformer.token_embedding.weight
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    grouped = {id(p) for group in (decay, no_decay) for p in group["params"]}
    assert grouped == {id(p) for p in model.parameters()}  # every parameter, the tied one counted once
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_trainer_run_logs_text_samples_and_steps_the_schedule(data_root, tmp_path):
    data = TextDataModule(root=str(data_root), block_size=16, batch_size=4)
    data.setup("fit")
    model = GPT(vocab_size=data.vocab_size, **TINY)
    trainer = L.Trainer(
        max_steps=2, logger=L.pytorch.loggers.TensorBoardLogger(tmp_path, name="gpt"), limit_val_batches=0,
        callbacks=[TextSamples(every_n_steps=2, prompt="Winston", max_new_tokens=12)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    events = EventAccumulator(str(tmp_path / "gpt" / "version_0"), size_guidance={"tensors": 0})
    events.Reload()
    texts = events.Tensors("samples/text_summary")
    assert [event.step for event in texts] == [2]
    logged = texts[0].tensor_proto.string_val[0].decode()
    assert logged.count("    Winston") == 2
    # The schedule steps once per optimiser step: after 2 steps the lr is the 3rd value of nanoGPT's warm-up,
    # lr (it + 1) / (warmup_steps + 1) with it = 2 (the warm-up outlasts this short run).
    want = model.hparams.lr * 3 / (model.hparams.warmup_steps + 1)
    assert [group["lr"] for group in trainer.optimizers[0].param_groups] == pytest.approx([want, want])


def test_fit_fast_dev_run_and_too_long_block_size(data_root, fit_in_process):
    small = ("--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2", "--model.block_size", "32")
    args = ("--model", "gpt", "--trainer.fast_dev_run", "true", "--data.root", str(data_root), *small)
    result = fit_in_process(*args, "--data.block_size", "32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gpt on TextDataModule" in result.stdout and "test/loss_nats = " in result.stdout
    refused = fit_in_process(*args, "--data.block_size", "64")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--data.block_size 64 is larger than the model's context 32" in refused.stderr

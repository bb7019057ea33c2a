"""Fine-tuning from a model folder: the embedding follows the tokenizer's vocabulary by the documented rule."""

import logging
from types import SimpleNamespace

import torch

from mambakit import Mamba, MambaConfig
from mambakit.tokenizer import load_tokenizer
from mambakit.train.finetune import NEW_ROW_NOISE, fit_vocabulary
from mambakit.train.trainer import TrainConfig, train


def fake_tokenizer(vocab_size):
    return SimpleNamespace(vocab_size=vocab_size, eos_token_id=0, bos_token_id=None, pad_token_id=None)


def test_larger_tokenizer_grows_embedding():
    torch.manual_seed(0)
    model = Mamba(MambaConfig(d_model=16, n_layer=1, vocab_size=64, unpadded_vocab_size=61, d_state=4))
    old = model.backbone.embedding.weight.detach().clone()

    fit_vocabulary(model, fake_tokenizer(75), seed=0)

    weight = model.backbone.embedding.weight
    assert weight.shape == (80, 16)
    assert model.lm_head.weight is weight
    assert model.config.vocab_size == 80
    assert model.config.unpadded_vocab_size == 75
    assert torch.equal(weight[:61], old[:61])

    mean, spread = old[:61].mean(dim=0), old[:61].std()
    new_rows = weight[61:].detach()
    deviation = (new_rows - mean).std()
    assert 0.5 * NEW_ROW_NOISE * spread < deviation < 2 * NEW_ROW_NOISE * spread
    assert torch.unique(new_rows, dim=0).shape[0] == new_rows.shape[0]

    logits = model(torch.tensor([[1, 70, 74]]))
    assert logits.shape == (1, 3, 80)


def test_smaller_tokenizer_keeps_embedding():
    model = Mamba(MambaConfig(d_model=16, n_layer=1, vocab_size=64, unpadded_vocab_size=64, d_state=4))
    old = model.backbone.embedding.weight.detach().clone()
    fit_vocabulary(model, fake_tokenizer(50), seed=0)
    assert torch.equal(model.backbone.embedding.weight, old)
    assert model.config.unpadded_vocab_size == 50


def test_init_from_with_larger_tokenizer(tmp_path, text_corpus, tokenizer_dir, caplog):
    tokenizer = load_tokenizer(tokenizer_dir)
    small_rows = 8 * ((tokenizer.vocab_size - 40) // 8)
    torch.manual_seed(0)
    base = Mamba(MambaConfig(d_model=16, n_layer=1, vocab_size=small_rows, unpadded_vocab_size=small_rows, d_state=4))
    base.save_pretrained(tmp_path / "base")

    config = TrainConfig(data=[str(text_corpus)], out=str(tmp_path / "run"), init_from=str(tmp_path / "base"),
                         tokenizer=str(tokenizer_dir), steps=2, batch_size=2, seq_len=16, warmup_steps=1,
                         eval_batches=1, log_every=1)
    with caplog.at_level(logging.WARNING, logger="mambakit.train.finetune"):
        summary = train(config, progress=False)

    assert f"resized the embedding from {small_rows} to" in caplog.text
    tuned = Mamba.from_pretrained(summary["model_dir"])
    assert tuned.config.vocab_size == 8 * -(-tokenizer.vocab_size // 8)
    assert tuned.config.unpadded_vocab_size == tokenizer.vocab_size
    assert tuned.config.d_model == 16  # the shape comes from the model folder, not the defaults

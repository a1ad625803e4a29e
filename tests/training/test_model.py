import math

import torch

from shoal.training.data import Corpus
from shoal.training.diloco_math import flatten_params, model_hash
from shoal.training.model import GPT, GPTConfig, evaluate, num_params

TINY = GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32)


def test_default_model_is_small_and_head_is_tied() -> None:
    model = GPT(GPTConfig())
    assert 200_000 <= num_params(model) <= 1_000_000
    assert model.head.weight is model.wte.weight


def test_same_seed_same_model_different_seed_different_model() -> None:
    h = model_hash(flatten_params(GPT(TINY, seed=1).parameters()))
    assert h == model_hash(flatten_params(GPT(TINY, seed=1).parameters()))
    assert h != model_hash(flatten_params(GPT(TINY, seed=2).parameters()))


def test_model_is_causal() -> None:
    model = GPT(TINY).eval()
    x = torch.randint(256, (1, 16))
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1) % 256
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)  # the past ignores the future
    assert not torch.allclose(a[0, 10:], b[0, 10:], atol=1e-6)


def test_evaluate_is_deterministic_and_near_uniform_at_init(small_corpus: Corpus) -> None:
    model = GPT(TINY)
    model.train()
    loss = evaluate(model, small_corpus, batches=2, batch_size=4)
    assert loss == evaluate(model, small_corpus, batches=2, batch_size=4)
    assert model.training  # mode restored
    assert abs(loss - math.log(256)) < 0.2

import itertools
import math
from typing import Any

import pytest
import torch

from shoal.training.data import Corpus
from shoal.training.local import (
    _average_adam_state,
    _norm_matched,
    simulate_diloco_inprocess,
    train_single_node,
)
from shoal.training.model import GPTConfig

TINY = GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32)


def test_diloco_four_peers_reduces_held_out_loss(small_corpus: Corpus) -> None:
    kwargs = dict(config=TINY, corpus=small_corpus, batch_size=8, eval_batches=2)
    result = simulate_diloco_inprocess(4, rounds=3, inner_steps=10, **kwargs)  # type: ignore[arg-type]
    assert result.final_loss < result.initial_loss - 0.3
    assert len(result.history) == 4
    assert result.bytes_sent < result.bytes_fp32 / 3.9  # int8 on the wire
    again = simulate_diloco_inprocess(4, rounds=3, inner_steps=10, **kwargs)  # type: ignore[arg-type]
    assert again.model_hash == result.model_hash  # the reference is reproducible bit for bit


def test_single_node_baseline_learns(small_corpus: Corpus) -> None:
    result = train_single_node(30, config=TINY, corpus=small_corpus, batch_size=8, eval_batches=2)
    assert result.final_loss < result.initial_loss - 0.3


def test_norm_matched_restores_the_replicas_mean_length() -> None:
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([3.0, -4.0])  # norms 5, mean (3, 0)
    out = _norm_matched((a + b) / 2, [a, b])
    assert torch.allclose(out.norm(), torch.tensor(math.sqrt(2) * 3.0))  # capped at sqrt(2)
    c = torch.tensor([4.0, 3.0])
    out = _norm_matched((a + c) / 2, [a, c])  # nearly aligned: stretched, not capped
    assert torch.allclose(out.norm(), torch.tensor(5.0))
    assert torch.allclose(out / out.norm(), (a + c) / (a + c).norm())  # same direction
    zero = torch.zeros(2)
    assert torch.equal(_norm_matched(zero, [a, -a]), zero)  # nothing to stretch


def test_average_adam_state_sets_every_replica_to_the_mean() -> None:
    models = [torch.nn.Linear(3, 2) for _ in range(2)]
    opts = [torch.optim.AdamW(m.parameters(), lr=0.1) for m in models]
    for i, (m, o) in enumerate(zip(models, opts, strict=True)):
        m(torch.full((1, 3), float(i + 1))).sum().backward()
        o.step()
    first = [next(iter(m.parameters())) for m in models]
    before = [o.state[p]["exp_avg"].clone() for p, o in zip(first, opts, strict=True)]
    _average_adam_state(list(opts))
    after = [o.state[p]["exp_avg"] for p, o in zip(first, opts, strict=True)]
    assert not torch.equal(before[0], before[1])
    assert torch.allclose(after[0], (before[0] + before[1]) / 2)
    assert torch.equal(after[0], after[1])


def test_ablations_run_and_bad_shard_mode_is_refused(small_corpus: Corpus) -> None:
    kwargs: dict[str, Any] = {
        "config": TINY,
        "corpus": small_corpus,
        "batch_size": 4,
        "eval_batches": 1,
    }
    base = simulate_diloco_inprocess(2, rounds=1, inner_steps=2, **kwargs)
    iid = simulate_diloco_inprocess(2, 1, 2, shard_mode="iid", **kwargs)
    contiguous = simulate_diloco_inprocess(2, 1, 2, shard_mode="contiguous", **kwargs)
    both = simulate_diloco_inprocess(
        2, 1, 2, average_inner_state=True, rescale_outer=True, outer_nesterov=False, **kwargs
    )
    assert len({base.model_hash, iid.model_hash, contiguous.model_hash, both.model_hash}) == 4
    with pytest.raises(ValueError, match="shard_mode"):
        simulate_diloco_inprocess(2, 1, 1, shard_mode="bogus", **kwargs)  # type: ignore[arg-type]


def test_eager_overlap_with_one_peer_is_plain_local_training(small_corpus: Corpus) -> None:
    """One peer, fp32, outer SGD lr 1 without momentum: each average is the peer's own
    pseudo-gradient, so synchronous DiLoCo is just local training. Eager overlap keeps
    the peer's progress while the delayed average lands, so it must give the same model;
    the plain delayed update restarts from stale params and must not."""
    kwargs: dict[str, Any] = dict(
        config=TINY, corpus=small_corpus, batch_size=8, eval_batches=2, codec="none",
        outer_lr=1.0, outer_momentum=0.0, outer_nesterov=False,
    )  # fmt: skip
    runs = {
        mode: simulate_diloco_inprocess(1, rounds=4, inner_steps=5, overlap=mode, **kwargs)
        for mode in ("off", "eager", "delayed")
    }
    assert runs["eager"].final_loss == pytest.approx(runs["off"].final_loss, abs=1e-4)
    assert abs(runs["delayed"].final_loss - runs["off"].final_loss) > 1e-3


def test_scheduled_lr() -> None:
    from shoal.training.local import scheduled_lr

    assert scheduled_lr(3e-3, "constant", 57, 100) == 3e-3
    lrs = [scheduled_lr(3e-3, "cosine", s, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(3e-3)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] > 3e-4 and scheduled_lr(3e-3, "cosine", 100, 100) == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="lr schedule"):
        scheduled_lr(3e-3, "linear", 0, 10)  # type: ignore[arg-type]


def test_result_feedback_changes_a_quantised_run_and_not_an_fp32_one(small_corpus: Corpus) -> None:
    """The owners' residual only exists where the average is re-encoded: with fp32 the
    flag must change nothing, with int4 (rounds >= 2, so a residual gets used) it must
    change the model."""
    kwargs: dict[str, Any] = dict(config=TINY, corpus=small_corpus, batch_size=4, eval_batches=1)
    runs = {
        (codec, fb): simulate_diloco_inprocess(
            2, 3, 2, codec=codec, result_feedback=fb, **kwargs
        ).model_hash
        for codec in ("none", "int4")
        for fb in (False, True)
    }
    assert runs["none", False] == runs["none", True]
    assert runs["int4", False] != runs["int4", True]

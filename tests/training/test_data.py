from pathlib import Path

import pytest
import torch

from shoal.training.data import (
    SHARD_STRIPE_BYTES,
    VOCAB_SIZE,
    Corpus,
    _seed_for,
    stdlib_corpus,
    text_corpus,
)


def test_stdlib_corpus_is_deterministic_capped_and_split_by_file(small_corpus: Corpus) -> None:
    again = stdlib_corpus(max_bytes=512 * 1024)
    assert again.fingerprint == small_corpus.fingerprint
    assert torch.equal(again.train, small_corpus.train)
    assert small_corpus.train.numel() + small_corpus.heldout.numel() == 512 * 1024
    assert list(small_corpus.files) == sorted(small_corpus.files)
    assert not any("site-packages" in f or f.startswith("test/") for f in small_corpus.files)
    assert 0 < small_corpus.heldout.numel() < small_corpus.train.numel()
    assert small_corpus.train.dtype == torch.uint8  # bytes are the tokens
    # Held-out text comes from whole files that training never sees.
    held = bytes(small_corpus.heldout[:200].tolist())
    assert held not in bytes(small_corpus.train.tolist())


def test_batches_are_deterministic_shifted_and_in_vocab(small_corpus: Corpus) -> None:
    a = small_corpus.batches("train", 4, 16, seed=5, shard=(1, 3))
    b = small_corpus.batches("train", 4, 16, seed=5, shard=(1, 3))
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (4, 16) and xa.dtype == torch.int64
        assert torch.equal(xa[:, 1:], ya[:, :-1])  # targets are inputs shifted by one
        assert int(xa.max()) < VOCAB_SIZE
    x_other, _ = next(small_corpus.batches("train", 4, 16, seed=6, shard=(1, 3)))
    assert not torch.equal(
        next(small_corpus.batches("train", 4, 16, seed=5, shard=(1, 3)))[0], x_other
    )


def test_shards_interleave_in_disjoint_stripes(small_corpus: Corpus) -> None:
    world, block = 4, 8
    train = bytes(small_corpus.train.tolist())
    stripe = SHARD_STRIPE_BYTES
    n_stripes = len(train) // stripe // world * world
    assert n_stripes >= 2 * world  # the small corpus really is striped
    for rank in range(world):
        own = [train[i * stripe : (i + 1) * stripe] for i in range(rank, n_stripes, world)]
        others = [
            train[i * stripe : (i + 1) * stripe] for i in range(n_stripes) if i % world != rank
        ]
        x, y = next(small_corpus.batches("train", 256, block, shard=(rank, world)))
        rows = [bytes([*rx, ry[-1]]) for rx, ry in zip(x.tolist(), y.tolist(), strict=True)]
        # Every window lies inside one of this peer's stripes...
        assert all(any(r in s for s in own) for r in rows)
        # ...and the peer's windows come from all over the split, not one region of it.
        places = [train.find(r) for r in rows if sum(s.count(r) for s in others) == 0]
        assert min(places) < len(train) // 4 and max(places) > 3 * len(train) // 4
    with pytest.raises(ValueError):
        next(small_corpus.batches("train", 4, 8, shard=(4, 4)))
    with pytest.raises(ValueError, match="stripe_bytes"):
        next(small_corpus.batches("train", 4, 8, shard=(0, 4), stripe_bytes=0))


def test_contiguous_shards_and_one_peer_sample_as_before(small_corpus: Corpus) -> None:
    world, block = 4, 8
    per = small_corpus.train.numel() // world
    for rank in range(world):
        slice_bytes = bytes(small_corpus.train[rank * per : (rank + 1) * per].tolist())
        stream = small_corpus.batches("train", 16, block, shard=(rank, world), stripe_bytes=None)
        x, y = next(stream)
        for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
            assert bytes([*row_x, row_y[-1]]) in slice_bytes
    # One peer: windows anywhere in the split, drawn with a single randint per batch.
    gen = torch.Generator().manual_seed(_seed_for(3, 0))
    starts = torch.randint(small_corpus.train.numel() - block, (5,), generator=gen)
    x, _ = next(small_corpus.batches("train", 5, block, seed=3))
    assert torch.equal(x, small_corpus.train[starts[:, None] + torch.arange(block)].long())


def test_eval_batches_are_fixed(small_corpus: Corpus) -> None:
    a = small_corpus.eval_batches(3, 5, 32)
    b = small_corpus.eval_batches(3, 5, 32)
    assert len(a) == 3
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b, strict=True))


def test_user_text_file_and_directory(tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("hello world\n" * 100)
    single = text_corpus(tmp_path / "one.txt")
    assert single.heldout.numel() == 120 and single.train.numel() == 1080  # tail held out
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    for i in range(30):
        (d / "sub" / f"{i:02}.md").write_text(f"document {i}\n" * 20)
    (d / ".hidden").write_text("secret")
    corpus = text_corpus(d)
    assert len(corpus.files) == 30 and ".hidden" not in corpus.files
    assert b"secret" not in bytes(corpus.train.tolist()) + bytes(corpus.heldout.tolist())
    assert (
        text_corpus(d, max_bytes=100).train.numel() + text_corpus(d, max_bytes=100).heldout.numel()
        == 100
    )
    with pytest.raises(FileNotFoundError):
        text_corpus(tmp_path / "missing")

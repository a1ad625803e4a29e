"""Byte-level text corpora: the stdlib demo corpus, or a user's own text files.

Bytes are tokens (vocab 256), so no tokenizer and nothing to download. The held-out
split is chosen per *file*, by a hash of its relative path, so held-out text is never
a neighbour of training text and the split does not move when files are added.

Peers must train on the same corpus; `Corpus.fingerprint` lets them check that
(stdlib sources differ between Python versions).
"""

from __future__ import annotations

import hashlib
import logging
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

VOCAB_SIZE = 256  # one token per byte
STDLIB_MAX_BYTES = 4 * 2**20  # 4 MiB: plenty for a 1M-param model, loads in well under 1 s
USER_MAX_BYTES = 256 * 2**20  # guard against pointing the loader at a disk image
HELDOUT_PERCENT = 10
# Peers' shards interleave in stripes this long (see Corpus.batches), at least this
# many windows each, so that few windows are lost at stripe edges.
SHARD_STRIPE_BYTES = 16 * 1024
MIN_WINDOWS_PER_STRIPE = 16
# Not "the stdlib's own code": third-party packages and the test suites (which hold
# odd encodings and generated data).
STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)

Split = Literal["train", "heldout"]


def _is_heldout(relpath: str) -> bool:
    digest = hashlib.sha256(relpath.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def _seed_for(seed: int, rank: int) -> int:
    """A 63-bit generator seed from (seed, rank), so peers' streams do not overlap."""
    digest = hashlib.sha256(f"shoal-batches:{seed}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _as_tokens(data: bytearray) -> torch.Tensor:
    """A uint8 tensor sharing `data`'s memory (a bytearray, so it is writable: no copy)."""
    if not data:  # frombuffer refuses empty buffers
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8)


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # uint8, 1-D
    heldout: torch.Tensor  # uint8, 1-D
    files: tuple[str, ...]  # relative paths, in the order they were read
    fingerprint: str  # sha256 over the file names and bytes

    def tokens(self, split: Split) -> torch.Tensor:
        if split == "train":
            return self.train
        if split == "heldout":
            return self.heldout
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")

    def shard_stripes(
        self,
        split: Split,
        block_size: int,
        shard: tuple[int, int] = (0, 1),
        stripe_bytes: int | None = SHARD_STRIPE_BYTES,
    ) -> tuple[torch.Tensor, int]:
        """Peer ``rank``'s share of ``split``: (start of each of its stripes, valid
        window starts per stripe). Windows of ``block_size + 1`` bytes never cross a
        stripe. `batches` samples from it, and so does DP-SGD (whose records are
        exactly these windows)."""
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard {shard}: need 0 <= rank < world")
        if block_size < 1:
            raise ValueError("batch_size and block_size must be >= 1")
        if stripe_bytes is not None and stripe_bytes < 1:
            raise ValueError(f"stripe_bytes must be >= 1 or None, got {stripe_bytes}")
        tokens = self.tokens(split)
        per_shard = tokens.numel() // world
        stripe = per_shard
        if stripe_bytes is not None and world > 1:
            # Striped, not contiguous: a corpus read file by file (the stdlib, sorted)
            # would otherwise give each peer different packages, and averaging
            # replicas that drifted apart measured 12% worse than IID shards
            # (docs/BENCHMARKS.md, "DiLoCo outer optimizer in short runs").
            stripe = min(per_shard, max(stripe_bytes, MIN_WINDOWS_PER_STRIPE * (block_size + 1)))
        windows = stripe - block_size  # valid start positions (need block + 1 bytes)
        if windows < 1:
            raise ValueError(
                f"{split} shard {rank}/{world} has {stripe} bytes per stripe; "
                f"block_size {block_size} needs more"
            )
        n_stripes = tokens.numel() // stripe // world * world  # equal shares; tail unused
        return torch.arange(rank, n_stripes, world) * stripe, windows

    def batches(
        self,
        split: Split,
        batch_size: int,
        block_size: int,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
        stripe_bytes: int | None = SHARD_STRIPE_BYTES,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (inputs, targets) int64 batches of shape (batch_size, block_size).

        `shard=(rank, world)`: the split is cut into stripes of `stripe_bytes` and
        peer `rank` samples windows only from stripes rank, rank + world, ... (every
        peer gets the same number; a window never crosses a stripe), with a generator
        seeded by (seed, rank). Same arguments, same batches, on any machine.
        `stripe_bytes=None`: one contiguous slice per peer instead. One peer
        (world 1) samples the whole split either way.
        """
        rank = shard[0]
        if batch_size < 1:
            raise ValueError("batch_size and block_size must be >= 1")
        tokens = self.tokens(split)
        mine, windows = self.shard_stripes(split, block_size, shard, stripe_bytes)
        gen = torch.Generator().manual_seed(_seed_for(seed, rank))
        offsets = torch.arange(block_size + 1)
        while True:
            starts = torch.randint(windows, (batch_size,), generator=gen)
            if mine.numel() > 1:  # one stripe (contiguous, world 1): no draw, same stream
                starts = starts + mine[torch.randint(mine.numel(), (batch_size,), generator=gen)]
            else:
                starts = starts + mine[0]
            rows = tokens[starts[:, None] + offsets].long()
            yield rows[:, :-1], rows[:, 1:]

    def eval_batches(
        self, n_batches: int, batch_size: int, block_size: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed held-out batches: windows evenly spaced over the whole held-out split."""
        tokens = self.heldout
        count = n_batches * batch_size
        last = tokens.numel() - block_size - 1
        if last < 0:
            raise ValueError(f"held-out split of {tokens.numel()} bytes < block_size + 1")
        starts = torch.linspace(0, last, count).long() if count > 1 else torch.zeros(count).long()
        rows = tokens[starts[:, None] + torch.arange(block_size + 1)].long()
        chunks = [rows[i : i + batch_size] for i in range(0, count, batch_size)]
        return [(b[:, :-1], b[:, 1:]) for b in chunks]


def corpus_from_files(root: Path, relpaths: Sequence[str], max_bytes: int) -> Corpus:
    """Read `relpaths` under `root` in the given order, up to `max_bytes` in total.

    A file that would cross the cap is cut short and reading stops there.
    """
    train, heldout = bytearray(), bytearray()
    used: list[str] = []
    fp = hashlib.sha256(b"shoal-corpus-v1\n")
    total = 0
    for rel in relpaths:
        if total >= max_bytes:
            break
        data = (root / rel).read_bytes()[: max_bytes - total]
        total += len(data)
        used.append(rel)
        fp.update(f"{rel}\t{len(data)}\n".encode())
        fp.update(data)
        (heldout if _is_heldout(rel) else train).extend(data)
    if not train or not heldout:
        # Too few files to split by file (e.g. one user file): hold out the tail instead.
        whole = train + heldout
        cut = len(whole) * (100 - HELDOUT_PERCENT) // 100
        train, heldout = whole[:cut], whole[cut:]
    log.info(
        "corpus: %d files, %d train + %d held-out bytes from %s",
        len(used),
        len(train),
        len(heldout),
        root,
    )
    return Corpus(_as_tokens(train), _as_tokens(heldout), tuple(used), fp.hexdigest())


def stdlib_files(root: Path) -> list[str]:
    """The stdlib's .py files under `root`, as sorted relative POSIX paths."""
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if STDLIB_SKIP_DIRS.isdisjoint(rel.parts[:-1]) and path.is_file():
            found.append(rel.as_posix())
    return sorted(found)


def stdlib_corpus(max_bytes: int = STDLIB_MAX_BYTES) -> Corpus:
    """The demo corpus: this Python's own standard-library sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root)
    if not files:
        raise FileNotFoundError(f"no .py files under the stdlib path {root}")
    return corpus_from_files(root, files, max_bytes)


def text_corpus(path: str | Path, max_bytes: int = USER_MAX_BYTES) -> Corpus:
    """A user's corpus: one text file, or every non-hidden file under a directory (sorted)."""
    path = Path(path)
    if path.is_file():
        return corpus_from_files(path.parent, [path.name], max_bytes)
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    files = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise ValueError(f"no files under {path}")
    return corpus_from_files(path, files, max_bytes)

from collections.abc import Iterator

import pytest
import torch

from shoal.training.data import Corpus, stdlib_corpus


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine
    # OpenMP spin-waits made the DiLoCo test 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_corpus() -> Corpus:
    # 512 KiB of stdlib: enough for a tiny model to learn something, quick to load.
    return stdlib_corpus(max_bytes=512 * 1024)

"""Block-by-block evaluation (osscar.lm.offloading.streaming_eval) against the model's own forward, per family.

Families differ in what their model loop reads off a block (Gemma 2/3: ``attention_type`` picks the sliding or
full mask; some return tuples), so the stand-in blocks of the last step must carry the same; a mismatch changes
every window's NLL. The chunking (how many windows' hidden states wait on the host) must follow ``host_bytes``.
"""

from __future__ import annotations

import pytest
import torch

from osscar.lm.evaluation.evaluate import perplexity
from osscar.lm.offloading.offload import ResidentBlocks
from osscar.lm.offloading.streaming_eval import chunk_size, streamed_perplexity

from .conftest import make_model
from .test_offload import _config

CPU = torch.device("cpu")
WINDOWS = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(11))  # 24 > the sliding window 5


class _CountingBlocks(ResidentBlocks):
    """A resident store that counts block fetches: one per block per chunk of windows."""

    def __init__(self, model) -> None:
        super().__init__(model, CPU)
        self.fetches = 0

    def fetch(self, i: int):
        self.fetches += 1
        return super().fetch(i)


@pytest.mark.parametrize("family", ["opt", "llama", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2"])
def test_streamed_perplexity_is_the_models_own(family):
    model = make_model(_config(family)).double()
    ref = perplexity(model, WINDOWS)["window_nll"]
    for host_bytes in (1, 1 << 30):  # one window per chunk; every window in one chunk
        got = streamed_perplexity(model, ResidentBlocks(model, CPU), WINDOWS, host_bytes=host_bytes)["window_nll"]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(ref), atol=1e-10, rtol=1e-10)


def test_chunks_follow_host_bytes():
    model = make_model(_config("llama"))  # 2 blocks, hidden 48, float32: 24 × 48 × 4 = 4608 bytes per window
    per_window = 24 * 48 * 4
    for host_bytes, chunks in ((1, 3), (2 * per_window, 2), (3 * per_window, 1)):
        store = _CountingBlocks(model)
        streamed_perplexity(model, store, WINDOWS, host_bytes=host_bytes)
        assert store.fetches == 2 * chunks, host_bytes


def test_chunk_size():
    assert chunk_size(10, 4, 8, 4, host_bytes=3 * 128) == 3 and isinstance(chunk_size(10, 4, 8, 4, 3 * 128), int)
    assert chunk_size(10, 4, 8, 4, host_bytes=3 * 128 + 127) == 3  # whole windows only
    assert chunk_size(10, 4, 8, 4, host_bytes=100) == 1  # at least one window, even over the budget
    assert chunk_size(2, 4, 8, 4, host_bytes=1 << 30) == 2  # never more than there are
    assert chunk_size(1, 4, 8, 4, host_bytes=1 << 30) == 1
    assert chunk_size(9, 1, 1, 1, host_bytes=5) == 5  # one byte per window

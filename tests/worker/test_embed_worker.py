"""Embedding workers, real processes over a real channel: the demo embedding models end to end, and what a worker refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlxtrio import _protocol as p

from .embed_worker import embed_worker, vectors, worker_config

TEXTS = (
    "A server is a promise to many people at once.",
    "hello",
    "When a worker falls over, the orchestrator notices and tells every waiting client the truth.",
)
# Vectors of one input alone and in a padded batch: equal within float32 rounding (a padded pass's products
# have other shapes, whose sums a backend may order differently; on the CPU backend they are bit for bit equal).
TOLERANCE = 1e-6


async def test_demo_embed_answers_each_request_with_one_normalised_vector_per_input(cache_dir: Path):
    async with embed_worker(worker_config(cache_dir, "demo-embed")) as worker:
        ready = worker.ready
        assert ready.task == "embed" and ready.engine == "embed"
        assert ready.embedding == p.EmbeddingInfo(
            dimensions=64, max_tokens=512, pooling="mean", normalize=True, matryoshka=False, architecture="encoder"
        )
        await worker.send(p.Embed(7, TEXTS))
        answer = await worker.answer(7)
        assert isinstance(answer, p.Embedded) and answer.dimensions == 64
        batch = vectors(answer)
        assert batch.shape == (3, 64)
        np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=TOLERANCE)
        # Each input's tokens, [CLS] and [SEP] included.
        assert answer.token_counts[1] == 3 and all(count > 3 for count in answer.token_counts[::2])
        for index, text in enumerate(TEXTS):
            alone = await worker.embed(text, request_id=10 + index)
            np.testing.assert_allclose(alone[0], batch[index], atol=TOLERANCE)
        assert not np.allclose(batch[0], batch[2], atol=1e-3) and not np.allclose(batch[0], batch[1], atol=1e-3)

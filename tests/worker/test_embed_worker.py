"""Embedding workers, real processes over a real channel: the demo embedding models end to end, and what a worker refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlxtrio import _protocol as p

from .embed_worker import LoadFailedError, embed_worker, vectors, worker_config

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


def _direct_decoder_vector(path: Path, ids: list[int]) -> np.ndarray:
    """mlx-lm's own forward pass: the backbone's hidden states (after the final norm), the last token's, normalised."""
    import mlx.core as mx
    import mlx_lm

    model, _tokenizer = mlx_lm.load(str(path))
    state = np.array(model.model(mx.array([ids]))[0, -1].astype(mx.float32))
    return state / np.linalg.norm(state)


async def test_demo_embed_decoder_pools_the_last_token_as_mlx_lm_computes_it_and_shortens_vectors(cache_dir: Path):
    from mlxtrio.worker._embed import ensure_demo_embed_decoder_model

    async with embed_worker(worker_config(cache_dir, "demo-embed-decoder")) as worker:
        assert worker.ready.task == "embed"
        assert worker.ready.embedding == p.EmbeddingInfo(
            dimensions=64, max_tokens=2048, pooling="last", normalize=True, matryoshka=True, architecture="decoder"
        )
        # Right padding with the causal mask alone: the shorter inputs' vectors are what they are alone.
        await worker.send(p.Embed(1, TEXTS))
        answer = await worker.answer(1)
        batch = vectors(answer)
        for index, text in enumerate(TEXTS):
            np.testing.assert_allclose((await worker.embed(text, request_id=10 + index))[0], batch[index], atol=TOLERANCE)
        assert not np.allclose(batch[0], batch[1], atol=1e-3)
        # The tokenizer ends each text with its end token, as Qwen3-Embedding's does.
        ids = (5, 17, 99, 230)
        from_ids = await worker.embed(ids, request_id=20)
        np.testing.assert_allclose(from_ids[0], _direct_decoder_vector(ensure_demo_embed_decoder_model(cache_dir), list(ids)), atol=1e-5)
        # Matryoshka: the first k components, normalised again.
        await worker.send(p.Embed(21, TEXTS, dimensions=16))
        short = await worker.answer(21)
        assert short.dimensions == 16
        expected = batch[:, :16] / np.linalg.norm(batch[:, :16], axis=1, keepdims=True)
        np.testing.assert_allclose(vectors(short), expected, atol=TOLERANCE)
        for bad in (0, 65):
            await worker.send(p.Embed(22, TEXTS, dimensions=bad))
            refused = await worker.answer(22)
            assert isinstance(refused, p.RequestFailed) and refused.param == "dimensions", refused
            assert refused.kind is p.ErrorKind.INVALID_REQUEST and "from 1 to 64" in refused.message


async def test_inputs_past_the_context_bad_tokens_and_dimensions_are_refused_naming_the_input(cache_dir: Path):
    async with embed_worker(worker_config(cache_dir, "demo-embed")) as worker:
        long_text = "the orchestrator notices " * 200
        await worker.send(p.Embed(1, ("short", long_text)))
        refused = await worker.answer(1)
        assert isinstance(refused, p.RequestFailed) and refused.kind is p.ErrorKind.INVALID_REQUEST
        assert (refused.param, refused.code) == ("input[1]", "context_length_exceeded")
        assert "context of 512 tokens" in refused.message
        # Cut to fit instead, its last token still [SEP].
        await worker.send(p.Embed(2, ("short", long_text), truncate=True))
        cut = await worker.answer(2)
        assert isinstance(cut, p.Embedded) and cut.token_counts[1] == 512
        over = tuple(range(5, 5 + 513))
        await worker.send(p.Embed(3, (over,)))
        assert (await worker.answer(3)).param == "input[0]"
        await worker.send(p.Embed(4, (over,), truncate=True))
        assert (await worker.answer(4)).token_counts == (512,)
        for bad in ((1, 2, 10**6), (1, -1), ()):
            await worker.send(p.Embed(5, ("fine", bad), param="prompt"))
            refused = await worker.answer(5)
            assert isinstance(refused, p.RequestFailed) and refused.param == "prompt[1]", refused
        await worker.send(p.Embed(6, ("",)))
        assert (await worker.answer(6)).param == "input[0]"
        await worker.send(p.Embed(7, ("fine",), dimensions=32))
        refused = await worker.answer(7)
        assert refused.param == "dimensions" and "cannot be shortened" in refused.message
        # The width itself is no shortening.
        await worker.send(p.Embed(8, ("fine",), dimensions=64))
        assert (await worker.answer(8)).dimensions == 64


# Inputs of a few tokens each, so many that one pass each (batch_tokens below two of them) takes a while in all.
MANY = tuple(f"input number {index} of a long batch" for index in range(400))


async def _first_heartbeat(worker) -> None:  # noqa: ANN001
    """Until a pass has run without finishing a request: the worker is inside a long batch."""
    while not isinstance(message := await worker.next(), p.Step):
        raise AssertionError(f"{message} before any pass ran")


async def test_a_ping_is_answered_between_the_passes_of_a_long_batch_and_a_cancel_drops_the_rest(cache_dir: Path):
    async with embed_worker(worker_config(cache_dir, "demo-embed", batch_tokens=16)) as worker:
        await worker.send(p.Embed(1, MANY))
        await _first_heartbeat(worker)
        await worker.send(p.Ping(42))
        while not isinstance(message := await worker.next(), p.Pong):
            assert isinstance(message, p.Step), message
        assert (message.nonce, message.active_sequences) == (42, 1)
        await worker.send(p.Cancel(1))
        await worker.send(p.Embed(2, ("after the cancel",)))
        # Request 1 never answers: the next answer is request 2's, and then nothing is in flight.
        assert isinstance(await worker.answer(2), p.Embedded)
        await worker.send(p.Ping(43))
        while not isinstance(message := await worker.next(), p.Pong):
            assert isinstance(message, p.Step), message
        assert (message.nonce, message.active_sequences) == (43, 0)
        # The whole batch still comes out, in order, when nothing cancels it.
        await worker.send(p.Embed(3, MANY[:40]))
        answer = await worker.answer(3)
        assert isinstance(answer, p.Embedded) and len(vectors(answer)) == 40


async def test_a_failing_pass_fails_the_requests_it_held_and_the_worker_goes_on(cache_dir: Path):
    # Eight tokens a pass: each of MANY's inputs (about ten tokens) is a pass of its own, and so is a long input.
    config = worker_config(cache_dir, "demo-embed", batch_tokens=8)
    long = "when a worker falls over the orchestrator notices"
    # Passes 1 to 50: request 1's; then, planned together once its passes have begun, request 2's "hello"
    # and request 3's long input, shortest first. The 52nd fails.
    async with embed_worker(config, failpoints="embed=oom@52") as worker:
        await worker.send(p.Embed(1, MANY[:50]))
        await _first_heartbeat(worker)
        await worker.send(p.Embed(2, ("hello",)))
        await worker.send(p.Embed(3, (long,)))
        answers = {}
        while len(answers) < 3:
            message = await worker.next()
            if isinstance(message, (p.Embedded, p.RequestFailed)):
                answers[message.request_id] = message
        assert isinstance(answers[1], p.Embedded) and isinstance(answers[2], p.Embedded), answers
        failed = answers[3]
        assert isinstance(failed, p.RequestFailed) and failed.kind is p.ErrorKind.OUT_OF_MEMORY, failed
        assert "out of memory" in failed.message
        await worker.send(p.Embed(4, ("hello", long)))
        assert isinstance(await worker.answer(4), p.Embedded)


async def test_each_kind_of_worker_refuses_the_other_kinds_request(cache_dir: Path):
    async with embed_worker(worker_config(cache_dir, "demo-embed")) as worker:
        await worker.send(p.Generate(1, p.SamplingParams(max_tokens=4), prompt="hello"))
        refused = await worker.answer(1)
        assert isinstance(refused, p.RequestFailed) and refused.code == "model_not_generative" and refused.param == "model"
    async with embed_worker(worker_config(cache_dir, "demo")) as worker:
        assert worker.ready.task == "generate" and worker.ready.embedding is None
        await worker.send(p.Embed(2, ("hello",)))
        refused = await worker.answer(2)
        assert isinstance(refused, p.RequestFailed) and refused.kind is p.ErrorKind.INVALID_REQUEST
        assert (refused.param, refused.code) == ("model", "model_not_embedding")


async def test_a_worker_group_refuses_to_embed(cache_dir: Path):
    import msgspec
    import pytest

    group = p.GroupConfig(hosts=("127.0.0.1", "127.0.0.1"), parallel="pipeline", backend="ring", ports=(1, 2), control_port=3)
    config = msgspec.structs.replace(worker_config(cache_dir, "demo-embed"), task="embed", group=group)
    with pytest.raises(LoadFailedError) as failed:
        async with embed_worker(config):
            pass
    assert "a worker group serves generation only" in failed.value.args[0].message



async def _heartbeats_until_answered(worker, request_id: int) -> tuple[int, p.Embedded]:  # noqa: ANN001
    """The progress messages before ``request_id``'s answer, and the answer, which must be its vectors."""
    steps = 0
    while not isinstance(message := await worker.next(), p.Embedded):
        assert isinstance(message, p.Step), message
        steps += 1
    assert message.request_id == request_id, message
    return steps, message


def _first_pass_inputs(token_counts: tuple[int, ...], tokens: int = 256) -> int:
    """How many of these inputs a first pass of ``tokens`` holds: the shortest, padded to the pass's longest."""
    counts = sorted(token_counts)
    taken = 1
    while taken < len(counts) and (taken + 1) * counts[taken] <= tokens:
        taken += 1
    return taken


async def test_a_fresh_model_s_first_pass_is_small_and_then_its_passes_are_as_large_as_it_runs_in_time(cache_dir: Path):
    async with embed_worker(worker_config(cache_dir, "demo-embed")) as worker:
        # About 2,000 tokens: over the first pass's size, well under MLX_EMBED_BATCH_TOKENS (8,192).
        await worker.send(p.Embed(1, MANY[:200]))
        # One heartbeat as it is taken in, one after the first pass; demo-embed runs the rest in one pass of its time.
        steps, answer = await _heartbeats_until_answered(worker, 1)
        assert steps == 2 and sum(answer.token_counts) > 1000, answer.token_counts
        await worker.send(p.Embed(2, MANY[:200]))
        assert (await _heartbeats_until_answered(worker, 2))[0] == 1


async def test_a_model_too_slow_for_its_pass_seconds_runs_smaller_passes_each_telling_its_progress(cache_dir: Path):
    # No model runs a token in a nanosecond: every pass after the first holds one input, and each tells it went by.
    async with embed_worker(worker_config(cache_dir, "demo-embed", pass_seconds=1e-9)) as worker:
        await worker.send(p.Embed(1, MANY[:60]))
        steps, answer = await _heartbeats_until_answered(worker, 1)
        # As it is taken in, then after each pass but the last.
        passes = 1 + (60 - _first_pass_inputs(answer.token_counts))
        assert steps == 1 + passes - 1 and passes > 30

"""The pieces of a worker group that need no second rank: control links, joining, shards, the prompt cache's share."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import mlx.core as mx
import pytest

from mlxtrio import _protocol as p
from mlxtrio.ipc import PeerGoneError
from mlxtrio.worker._group import _join, _link, _token
from mlxtrio.worker._group._ops import OPS, Admit, Cancel, Hello, Step, Stop
from mlxtrio.worker._mlx_lm import load_shard
from mlxtrio.worker._mlx_lm._shard import shard_refusal
from mlxtrio.worker._model_source import LoadError

from ..group_models import QWEN2_VERSION, build_tiny_qwen2


def _never() -> None:
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _group(**changes: object) -> p.GroupConfig:
    settings = {"hosts": ("127.0.0.1", "127.0.0.1"), "parallel": "pipeline", "backend": "ring", "ports": (32323, 32324), "control_port": 32325}
    return p.GroupConfig(**{**settings, **changes})


def _raw_hello(port: int, op: object) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    payload = OPS.encode(op)
    sock.sendall(len(payload).to_bytes(4, "big") + payload)
    return sock


def test_rank_0_takes_only_the_ranks_that_show_the_token_and_they_receive_its_ops_in_order():
    port = _free_port()
    listener = _link.Listener("127.0.0.1", port)
    # Strangers first: a wrong token, a rank out of range, and a connection that sends no Hello at all.
    strangers = [_raw_hello(port, Hello(1, "guess")), _raw_hello(port, Hello(5, "secret")), socket.create_connection(("127.0.0.1", port))]
    strangers[2].sendall(b"\x00\x00\x00\x03abc")
    # And one that announces a frame far larger than a Hello, and sends nothing more.
    strangers.append(socket.create_connection(("127.0.0.1", port)))
    strangers[3].sendall(b"\x3f\xff\xff\xff")
    found: list[_link.LeaderLink] = []
    follower = threading.Thread(target=lambda: found.append(_link.connect("127.0.0.1", port, rank=1, token="secret", interrupt=_never)))
    follower.start()
    started = time.monotonic()
    links = listener.accept(2, "secret", interrupt=_never, deadline=float("inf"))
    # None of them held the forming up for the Hello wait (_HELLO_WAIT, 10 s): each was dropped as soon as it showed itself.
    assert time.monotonic() - started < 5
    follower.join()
    request = p.Generate(7, p.SamplingParams(max_tokens=3), prompt="hello")
    links.send(Admit(request))
    links.send(Step(1))
    links.send(Stop())
    (leader,) = found
    assert [leader.receive(interrupt=_never) for _ in range(3)] == [Admit(request), Step(1), Stop()]
    for stranger in strangers[:2] + strangers[3:]:
        assert stranger.recv(1) == b"", "a stranger was kept"
    # Rank 0 listens no more once the group has formed.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    links.close()
    with pytest.raises(PeerGoneError):
        leader.receive(interrupt=_never)
    leader.close()
    for stranger in strangers:
        stranger.close()


def test_a_rank_that_never_connects_fails_the_forming_at_its_deadline():
    listener = _link.Listener("127.0.0.1", _free_port())
    with pytest.raises(TimeoutError, match=r"ranks \[1\] did not connect"):
        listener.accept(2, "secret", interrupt=_never, deadline=0)


def test_the_ring_hostfile_is_private_and_gone_once_the_group_has_started(monkeypatch):
    seen: dict = {}

    def init(*, backend: str, strict: bool) -> object:
        path = Path(os.environ["MLX_HOSTFILE"])
        seen.update(backend=backend, strict=strict, hosts=json.loads(path.read_text()), mode=stat.S_IMODE(path.stat().st_mode), path=path)
        raise RuntimeError("stop here")

    monkeypatch.setattr(mx.distributed, "init", init)
    # Set here so that they are put back as they were after the test.
    monkeypatch.setenv("MLX_HOSTFILE", "unset")
    monkeypatch.setenv("MLX_RANK", "unset")
    with pytest.raises(RuntimeError, match="stop here"):
        _join.join(_group(), 1)
    assert seen["hosts"] == [["127.0.0.1:32323"], ["127.0.0.1:32324"]] and seen["mode"] == 0o600
    assert seen["backend"] == "ring" and seen["strict"] is True and os.environ["MLX_RANK"] == "1"
    assert not seen["path"].exists()


def test_ranks_that_share_a_host_take_a_gpu_each_on_cuda(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _join.devices_before_mlx(_group(backend="nccl", hosts=("10.0.0.1", "10.0.0.2", "10.0.0.1")), 2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    # The operator's choice stands.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    _join.devices_before_mlx(_group(backend="nccl"), 1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_the_token_comes_from_the_environment_once_or_from_standard_input(monkeypatch):
    import io

    monkeypatch.setenv(_token.TOKEN_VARIABLE, "abc")
    assert _token.group_token() == "abc"
    # Taken out: nothing this rank starts inherits it.
    assert _token.TOKEN_VARIABLE not in os.environ
    monkeypatch.setattr("sys.stdin", io.StringIO("def\nrest"))
    assert _token.group_token() == "def"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(ValueError, match="no group token"):
        _token.group_token()


class _World:
    """A group of one, standing for rank ``rank`` of ``size``: enough to cut a model as that rank would."""

    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def test_a_shard_loads_from_a_single_file_without_an_index(cache_dir):
    path = build_tiny_qwen2(cache_dir / "models" / f"tiny-qwen2-v{QWEN2_VERSION}")
    assert not (path / "model.safetensors.index.json").exists()
    first, last = load_shard(path, _World(1, 2), "pipeline"), load_shard(path, _World(0, 2), "pipeline")
    # mlx-lm's pipeline gives the last rank the first layers.
    assert (first.span, last.span, first.layers) == ((0, 2), (2, 4), 4)
    assert first.describe(first.span, 2) == "layers 0-1 of 4" and last.describe(None, 2) == "1/2 of every layer"
    assert [layer is None for layer in first.model.model.layers] == [False, False]
    assert first.tokenizer.eos_token_ids


def test_a_model_mlx_lm_cannot_split_so_is_refused_with_the_mode_it_can():
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs.from_dict({
        "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 8, "num_attention_heads": 2,
        "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "vocab_size": 16,
    }))  # fmt: skip
    assert shard_refusal(model, "llama", "pipeline").endswith('cannot split llama models by pipeline parallelism: use parallel = "tensor"')
    assert shard_refusal(model, "llama", "tensor") is None


def test_a_vision_model_is_refused_before_the_group_forms(tiny_qwen2_vl):
    from mlxtrio.worker._group._rank import form

    config = msgspec_config(tiny_qwen2_vl)
    with pytest.raises(LoadError, match="a vision model cannot be served by a worker group") as refused:
        form(config, 0, tiny_qwen2_vl)
    assert refused.value.kind is p.ErrorKind.INVALID_REQUEST and refused.value.code == "group_unsupported"


def msgspec_config(path: Path) -> p.WorkerConfig:
    return p.WorkerConfig(
        model_id="m", source="local", location=str(path), cache_dir="/nonexistent", memory_budget_bytes=1 << 30,
        prefill_step_size=64, decode_concurrency=4, prefill_batch_size=4, prefill_bucket=0, prompt_cache_bytes=1 << 20,
        chat_template=None, cpus=(), cpus_for_cpu_backend_only=True, image_max_pixels=1 << 20, blas_library=None,
        grammar_compile_timeout=5.0, task="generate",
        embedding=p.EmbeddingSettings(pooling=None, normalize=None, matryoshka=False, batch_tokens=8192, pass_seconds=6.0), group=_group(),
    )  # fmt: skip


class _Ops:
    def __init__(self, ops: list) -> None:
        self._ops = list(ops)

    def receive(self, *, interrupt: object) -> object:
        return self._ops.pop(0)


class _Engine:
    def __init__(self) -> None:
        self.calls: list = []
        self.active = 0
        self.broken = False

    def admit(self, request: p.Generate) -> int:
        self.calls.append(("admit", request.request_id))
        if request.prompt == "refused":
            raise ValueError("rank 0 refuses it too")
        self.active += 1
        return 1

    def step(self) -> tuple:
        self.calls.append("step")
        return [], []

    def settle(self) -> None:
        self.calls.append("settle")

    def cancel(self, request_id: int) -> bool:
        self.calls.append(("cancel", request_id))
        self.active -= 1
        return True


def _follow(ops: list, engine: _Engine) -> int:
    from mlxtrio.worker._group._follower import _follow as follow
    from mlxtrio.worker._group._rank import Member

    return follow(_Ops(ops), engine, Member(mx.distributed.init(), 1, None), _never)


def test_a_follower_makes_rank_0s_calls_in_order_and_stops_when_told():
    def generate(request_id: int, prompt: str = "hi") -> p.Generate:
        return p.Generate(request_id, p.SamplingParams(max_tokens=3), prompt=prompt)

    engine = _Engine()
    ops = [Admit(generate(1)), Admit(generate(2, "refused")), Step(1), Cancel(1), Step(0), Stop()]
    assert _follow(ops, engine) == p.WorkerExit.OK
    assert engine.calls == [("admit", 1), ("admit", 2), "step", "settle", ("cancel", 1), "step", "settle"]


def test_a_follower_whose_batch_differs_from_rank_0s_stops_the_group_before_stepping():
    engine = _Engine()
    assert _follow([Step(2)], engine) == p.WorkerExit.GROUP_BROKEN
    assert engine.calls == []


class _Grammars:
    def __init__(self) -> None:
        self.kept: list = []
        self.submitted: list = []

    def compiled(self, grammar: p.Grammar) -> bool:
        return grammar in self.kept

    def submit(self, grammar: p.Grammar):  # noqa: ANN201 - a Future
        from concurrent.futures import Future

        self.submitted.append(grammar)
        future: Future = Future()
        future.set_result(f"matcher of {grammar.text}")
        return future

    def keep(self, grammar: p.Grammar, matcher: str) -> None:
        self.kept.append(grammar)


def test_a_follower_compiles_what_rank_0_compiles_and_holds_no_grammar_rank_0_gave_up_on():
    from mlxtrio.worker._group._ops import Compile

    engine = _Engine()
    engine.grammars = _Grammars()
    given_up, used = (p.Grammar("json_schema", text, "response_format") for text in ("{}", '{"type": "object"}'))
    request = p.Generate(1, p.SamplingParams(max_tokens=3, grammar=used), prompt="hi")
    # Rank 0 refused given_up's request (it compiled too slowly there) and admitted used's.
    assert _follow([Compile(given_up), Compile(used), Admit(request), Compile(used), Stop()], engine) == p.WorkerExit.OK
    assert engine.grammars.submitted == [given_up, used] and engine.grammars.kept == [given_up, used]
    assert engine.calls == [("admit", 1)]

"""An embedding model's worker in orchestrator tests, without MLX: a real process on a real channel that keeps the
seam's promises for Embed, and no more.

python fake_embedder.py CONFIG_JSON CHANNEL_SPEC
    Attaches, sends Hello, then Ready (task "embed", 8 dimensions, 64 tokens). Each Embed is answered by one
    Embedded: an input's vector is drawn from its SHA-256, its tokens are its words (or its ids). The input
    "too long" is refused (context_length_exceeded, naming it); "crash" ends the process; "wait" is answered
    never: the request stays until its Cancel. A Pong counts the requests waiting. A Generate is refused
    (model_not_generative). Shutdown: exit 0.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys

import msgspec

from mlxtrio import _protocol as p
from mlxtrio._errors import ErrorKind
from mlxtrio.ipc import Channel, ChannelSpec, PeerGoneError, parent_watch

DIMENSIONS = 8
MAX_TOKENS = 64


def vector(value: str | tuple[int, ...]) -> list[float]:
    digest = hashlib.sha256(repr(value).encode()).digest()
    return [byte / 255 - 0.5 for byte in digest[:DIMENSIONS]]


def _answer(message: p.Embed) -> p.ToOrchestrator:
    counts = []
    for index, value in enumerate(message.inputs):
        tokens = len(value.split()) if isinstance(value, str) else len(value)
        if value == "too long":
            return p.RequestFailed(
                message.request_id, ErrorKind.INVALID_REQUEST, f"{message.param}[{index}] has more than {MAX_TOKENS} tokens",
                param=f"{message.param}[{index}]", code="context_length_exceeded",
            )
        counts.append(tokens)
    rows = b"".join(struct.pack(f"<{DIMENSIONS}f", *vector(value)) for value in message.inputs)
    return p.Embedded(message.request_id, DIMENSIONS, rows, tuple(counts))


def main(config_json: str, spec: str) -> int:
    config = msgspec.json.decode(config_json, type=p.WorkerConfig)
    channel = Channel.attach(ChannelSpec.from_json(spec))
    watch = parent_watch()

    def send(message: p.ToOrchestrator) -> None:
        channel.writer.send(p.TO_ORCHESTRATOR.encode(message), interrupt=watch)

    send(p.Hello(os.getpid()))
    info = p.EmbeddingInfo(DIMENSIONS, MAX_TOKENS, "mean", True, False, "encoder")
    send(p.Ready(config.model_id, 0.01, 1000, engine="embedding", task="embed", embedding=info))
    waiting: set[int] = set()
    try:
        while True:
            message = p.TO_WORKER.decode(channel.reader.receive(interrupt=watch))
            if isinstance(message, p.Embed):
                if "crash" in message.inputs:
                    os._exit(3)
                if "wait" in message.inputs:
                    waiting.add(message.request_id)
                else:
                    send(_answer(message))
            elif isinstance(message, p.Generate):
                send(p.RequestFailed(message.request_id, ErrorKind.INVALID_REQUEST, "an embedding model", code="model_not_generative"))
            elif isinstance(message, p.Cancel):
                waiting.discard(message.request_id)
            elif isinstance(message, p.Ping):
                send(p.Pong(message.nonce, len(waiting)))
            elif isinstance(message, p.Shutdown):
                return 0
    except PeerGoneError:
        return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

"""Messages between the orchestrator and a worker: the narrow interface between the two rooms.

Both sides import this package and nothing of each other. The orchestrator
never imports MLX; the worker never imports Trio or HTTP. Every message is a
tagged msgspec Struct encoded as MessagePack arrays (``array_like``): compact,
and validated as it is decoded (``mlxtrio.ipc.Codec``).
"""

from __future__ import annotations

from ..ipc import Codec
from ._control import Cancel, Hello, LoadFailed, Ping, Pong, RankInfo, Ready, RequestFailed, Shutdown
from ._embedding import Embed, Embedded, EmbeddingInfo, EmbeddingSettings
from ._generation import (
    LOW_DETAIL_PIXELS,
    Admitted,
    ChatMessage,
    ContentPart,
    Delta,
    Generate,
    Grammar,
    ImageInput,
    SamplingParams,
    Step,
    TokenLogprob,
    ToolCall,
)
from ._kinds import ErrorKind, WorkerExit
from ._worker_config import GROUP_TOKEN_VARIABLE, GroupConfig, WorkerConfig

__all__ = [
    "Admitted",
    "Cancel",
    "ChatMessage",
    "ContentPart",
    "Delta",
    "Embed",
    "Embedded",
    "EmbeddingInfo",
    "EmbeddingSettings",
    "ErrorKind",
    "GROUP_TOKEN_VARIABLE",
    "Generate",
    "Grammar",
    "GroupConfig",
    "Hello",
    "ImageInput",
    "LOW_DETAIL_PIXELS",
    "LoadFailed",
    "Ping",
    "Pong",
    "RankInfo",
    "Ready",
    "RequestFailed",
    "SamplingParams",
    "Shutdown",
    "Step",
    "TokenLogprob",
    "ToolCall",
    "WorkerConfig",
    "WorkerExit",
    "TO_ORCHESTRATOR",
    "TO_WORKER",
    "ToOrchestrator",
    "ToWorker",
]

# --- orchestrator -> worker
ToWorker = Generate | Embed | Cancel | Ping | Shutdown
# --- worker -> orchestrator
ToOrchestrator = Hello | Ready | LoadFailed | Admitted | Step | Embedded | RequestFailed | Pong

TO_WORKER: Codec[ToWorker] = Codec(ToWorker)
TO_ORCHESTRATOR: Codec[ToOrchestrator] = Codec(ToOrchestrator)

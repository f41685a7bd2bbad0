"""Rank 0's engine in a group: every call it takes goes to the other ranks first, which then make it too.

The worker's loop (``_main.py``) drives this exactly as it drives an engine
of its own. Each call that changes the engine is sent on the control links
before rank 0 makes it, so a call that runs the model (a step; an admission
that computes an echoed prompt's log probabilities) finds the other ranks
making it beside rank 0, their collectives paired. A grammar rank 0 starts
compiling is sent at once, so that the others compile it while rank 0 does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..._protocol import Generate, Grammar, RankInfo, WorkerConfig
from .._model_source import LoadError, model_path
from ._link import CONNECT_WAIT, FollowerLinks, Listener
from ._ops import Admit, Cancel, CancelAll, Compile, Step, Stop
from ._rank import form, group_engine, meet
from ._token import group_token

__all__ = ["GroupBroken", "GroupLeader", "lead"]


class GroupBroken(Exception):
    """A step failed on rank 0: the group ends, and its requests are failed by the server, which names the rank that went first."""


class _SharedGrammars:
    """Rank 0's grammar compiler; each grammar it starts compiling is told to the other ranks."""

    def __init__(self, grammars: Any, links: FollowerLinks) -> None:
        self._grammars = grammars
        self._links = links

    def submit(self, grammar: Grammar) -> Future:
        self._links.send(Compile(grammar))
        return self._grammars.submit(grammar)

    def compiled(self, grammar: Grammar) -> bool:
        return self._grammars.compiled(grammar)

    def keep(self, grammar: Grammar, matcher: Any) -> None:
        self._grammars.keep(grammar, matcher)


class GroupLeader:
    """The engine contract (``_engine.Engine``) over rank 0's engine and the links to the other ranks."""

    # Images need a vision model, which a group refuses (_rank.py).
    images = None

    def __init__(self, engine: Any, links: FollowerLinks, world: Any) -> None:
        self._engine = engine
        self._links = links
        self._world = world
        self.kind = engine.kind
        self.grammars = _SharedGrammars(engine.grammars, links)

    @property
    def tool_format(self) -> str | None:
        return self._engine.tool_format

    @property
    def active(self) -> int:
        return self._engine.active

    @property
    def prompt_cache_bytes(self) -> int:
        return self._engine.prompt_cache_bytes

    @property
    def broken(self) -> bool:
        return self._engine.broken

    def admit(self, request: Generate) -> int:
        self._links.send(Admit(request))
        return self._engine.admit(request)

    def step(self):  # noqa: ANN201 - StepResult
        self._links.send(Step(self._engine.active))
        deltas, failures = self._engine.step()
        if failures and self._engine.broken:
            # Most likely a rank went (the backend's "connection to a peer was lost"): the server says which, not this.
            raise GroupBroken(str(failures[0][1]))
        return deltas, failures

    def settle(self) -> None:
        # The others settle right after their step: the same order of work, as nothing runs the model between.
        self._engine.settle()

    def cancel(self, request_id: int) -> bool:
        self._links.send(Cancel(request_id))
        return self._engine.cancel(request_id)

    def cancel_all(self) -> None:
        self._links.send(CancelAll())
        self._engine.cancel_all()

    def stop(self) -> None:
        """A planned end: everything computed, the others told, one last meeting, so that no rank leaves one mid-collective."""
        import mlx.core as mx

        mx.synchronize()
        self._links.send(Stop())
        mx.eval(mx.distributed.all_sum(mx.array(1), group=self._world))
        self._links.close()

    def close(self) -> None:
        self._links.close()


def lead(config: WorkerConfig, *, interrupt: Callable[[], None], progress: Callable[[], None]) -> tuple[GroupLeader, tuple[RankInfo, ...]]:
    """Rank 0's part in forming the group: every other rank's control link, then the group, the shard, the engine, the meeting.

    The links come first: a rank that never comes fails the load in ``CONNECT_WAIT`` rather than holding it.
    """
    group = config.group
    assert group is not None
    try:
        listener = Listener(group.hosts[0], group.control_port)
    except OSError as exc:
        raise LoadError(f"rank 0 cannot listen on {group.hosts[0]}:{group.control_port}: {exc}") from exc
    try:
        links = listener.accept(len(group.hosts), group_token(), interrupt=interrupt, deadline=time.monotonic() + CONNECT_WAIT)
    except TimeoutError as exc:
        raise LoadError(f"the worker group did not form: {exc} within {CONNECT_WAIT:g} s") from exc
    finally:
        listener.close()
    try:
        member = form(config, 0, model_path(config))
        engine = group_engine(member, config, progress=progress)
        ranks = meet(member, group.hosts)
    except BaseException:
        links.close()
        raise
    return GroupLeader(engine, links, member.world), ranks

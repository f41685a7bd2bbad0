"""A rank other than 0: ``python -m mlxtrio.worker --rank R <WorkerConfig JSON>``.

It connects its control link to rank 0, joins the group, loads its shard,
meets the others, then makes each engine call rank 0 sends, in order, and
throws its outputs away (rank 0 sends them). It exits when told to stop
(after a last meeting), when rank 0 is gone (the link closes, or a
collective raises), when its parent is gone, or at the first failed step.
"""

from __future__ import annotations

import sys

from ... import _protocol as p
from ...ipc import PeerGoneError, parent_watch
from ...tuning import load_worker_blas
from .._model_source import LoadError, model_path
from ._join import devices_before_mlx
from ._link import connect
from ._ops import Admit, Cancel, CancelAll, Compile, Step, Stop
from ._rank import form, group_engine, meet
from ._token import group_token

__all__ = ["follow"]


def follow(rank: int, config: p.WorkerConfig) -> int:
    group = config.group
    if group is None or not 0 < rank < len(group.hosts):
        print(f"mlxtrio worker: rank {rank} is not a follower of this group", file=sys.stderr)
        return p.WorkerExit.LOAD_FAILED
    devices_before_mlx(group, rank)
    watch = parent_watch()
    try:
        link = connect(group.hosts[0], group.control_port, rank=rank, token=group_token(), interrupt=watch)
    except OSError as exc:
        print(f"mlxtrio worker rank {rank}: cannot reach rank 0 at {group.hosts[0]}:{group.control_port}: {exc}", file=sys.stderr)
        return p.WorkerExit.CHANNEL_BROKEN
    except PeerGoneError:
        return p.WorkerExit.OK
    try:
        load_worker_blas(config.blas_library, cpus=())
        try:
            member = form(config, rank, model_path(config))
        except LoadError as exc:
            # Rank 0 says why to the server; this rank only leaves.
            print(f"mlxtrio worker rank {rank}: cannot load: {exc}", file=sys.stderr)
            return p.WorkerExit.LOAD_FAILED
        engine = group_engine(member, config, progress=lambda: None)
        meet(member, group.hosts)
        return _follow(link, engine, member, watch)
    except PeerGoneError:
        return p.WorkerExit.OK
    finally:
        link.close()


def _follow(link, engine, member, watch) -> int:  # noqa: ANN001
    import mlx.core as mx

    # Grammars rank 0 started compiling: compiled here too, off this thread, for the Admit to come.
    compiling: dict = {}
    while True:
        op = link.receive(interrupt=watch)
        if isinstance(op, Step):
            if engine.active != op.active:
                # The same calls made different batches: stop before the ranks' collectives pair wrong work.
                print(f"mlxtrio worker rank {member.rank}: {engine.active} sequences here, {op.active} on rank 0; the group stops", file=sys.stderr)
                return p.WorkerExit.GROUP_BROKEN
            engine.step()
            engine.settle()
            if engine.broken:
                print(f"mlxtrio worker rank {member.rank}: a step failed; the group stops", file=sys.stderr)
                return p.WorkerExit.GROUP_BROKEN
        elif isinstance(op, Admit):
            grammar = op.request.params.grammar
            future = compiling.pop(grammar, None) if grammar is not None else None
            if future is not None:
                _keep(engine, grammar, future)
            try:
                engine.admit(op.request)
            except Exception:  # noqa: BLE001, S110 - rank 0 refuses it too, with the same error, and says so
                pass
        elif isinstance(op, Cancel):
            engine.cancel(op.request_id)
        elif isinstance(op, CancelAll):
            engine.cancel_all()
        elif isinstance(op, Compile):
            # Those done are kept (bounded, as rank 0's are): rank 0 may have refused their requests for taking too long.
            for done in [grammar for grammar, future in compiling.items() if future.done()]:
                _keep(engine, done, compiling.pop(done))
            if not engine.grammars.compiled(op.grammar) and op.grammar not in compiling:
                compiling[op.grammar] = engine.grammars.submit(op.grammar)
        elif isinstance(op, Stop):
            mx.synchronize()
            mx.eval(mx.distributed.all_sum(mx.array(1), group=member.world))
            return p.WorkerExit.OK


def _keep(engine, grammar, future) -> None:  # noqa: ANN001
    """A grammar compiled here for rank 0's requests (waited for), kept; one that failed is left to the admission, which fails as rank 0's did."""
    if engine.grammars.compiled(grammar):
        return
    try:
        engine.grammars.keep(grammar, future.result())
    except Exception:  # noqa: BLE001, S110 - see the docstring
        pass

"""One model over several ranks through mlx.distributed (issue 27).

Rank 0 is the worker on the channel: its loop (``_main.py``) drives a
``GroupLeader`` (``_leader.py``) as it drives an engine of its own, and each
engine call goes over the control links (``_link.py``, ``_ops.py``) to the
other ranks (``_follower.py``), which make it after it, so every rank holds
the same batch at every step. Every rank samples rank 0's tokens
(``_share.py``). Forming the group (``_join.py``, ``_rank.py``): join
mlx.distributed, load this rank's shard, build the engine alike on every
rank, meet. Any rank's failure ends the whole group; the orchestrator then
kills what is left of it (orchestrator/_group.py).
"""

from ._follower import follow
from ._join import devices_before_mlx
from ._leader import GroupBroken, GroupLeader, lead
from ._share import TokenShare

__all__ = ["GroupBroken", "GroupLeader", "TokenShare", "devices_before_mlx", "follow", "lead"]

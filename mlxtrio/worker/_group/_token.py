"""The group's token: a secret the orchestrator makes for each start of a group, and each rank shows rank 0.

Local ranks find it in their environment (private to the user, unlike a
command line); a rank on another host, started over ssh, reads it from the
first line of its standard input, which the orchestrator writes.
"""

from __future__ import annotations

import os
import sys

from ..._protocol import GROUP_TOKEN_VARIABLE

__all__ = ["TOKEN_VARIABLE", "group_token"]

TOKEN_VARIABLE = GROUP_TOKEN_VARIABLE


def group_token() -> str:
    token = os.environ.pop(TOKEN_VARIABLE, None)
    if token is None:
        token = sys.stdin.readline().strip()
    if not token:
        raise ValueError(f"no group token: neither {TOKEN_VARIABLE} nor a first line on standard input")
    return token

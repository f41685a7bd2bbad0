"""Small helpers shared by the test suite."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import trio

P = ParamSpec("P")
T = TypeVar("T")


def bounded(seconds: float) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Run an async test under ``trio.fail_after``: a regression fails it instead of hanging the suite.

    (A cancel scope in a pytest-trio fixture does not cover the test's own task.)
    """

    def decorate(test: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(test)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            with trio.fail_after(seconds):
                return await test(*args, **kwargs)

        return run

    return decorate

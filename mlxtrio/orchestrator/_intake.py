"""Generation requests the server is still taking in: how a worker knows that more are coming.

A worker that finds its engine idle starts a step as soon as its ring is
empty. In a burst, requests reach it one by one, as the orchestrator finishes
taking each in (HTTP, parsing, validation), and when the worker admits them
faster than they come it starts on the first few alone. The rest then wait
for that step and pay for one of their own: on an H100 a batch's first step
of the Qwen2.5-0.5B shape took 11-16 ms, and bursts of 8 reached their
median first token in 27.6-30.2 ms, against 20.4-23.3 ms as one batch
(docs/PERFORMANCE.md, seventh session).

So the HTTP side registers each generation request as it begins
(``Intake.arrive``), and the request's ``Arrival`` ends when its
``Generate`` goes out (``hand_over``) or the request ends without one
(``leave``: refused, failed, or its client left). Each ``Generate`` tells the
worker how many more the orchestrator expects (``Generate.followers``: the
requests still arriving and the request's own remaining choices), and
before a batch's first step the worker waits for them, briefly
(``worker/_main.py``). The count is a hint: a request that fails its
validation or names another model never comes, and the worker's wait for it
is bounded.
"""

from __future__ import annotations

import attrs

__all__ = ["Arrival", "Intake", "IntakeStatistics"]


@attrs.frozen
class IntakeStatistics:
    # Generation requests begun and not yet handed to a worker (nor ended).
    arriving: int
    # Requests handed to a worker since the server started.
    handed_over: int


@attrs.define
class Intake:
    """The server's generation requests between their arrival and their ``Generate``."""

    _arriving: int = 0
    _handed_over: int = 0

    def arrive(self) -> Arrival:
        self._arriving += 1
        return Arrival(self)

    @property
    def arriving(self) -> int:
        return self._arriving

    def statistics(self) -> IntakeStatistics:
        return IntakeStatistics(self._arriving, self._handed_over)

    def _close(self, *, handed_over: bool) -> None:
        self._arriving -= 1
        self._handed_over += handed_over


@attrs.define(eq=False)
class Arrival:
    """One request in the intake, until its ``Generate`` goes out or it ends; either ends it once."""

    _intake: Intake
    _open: bool = True

    def hand_over(self) -> int:
        """The request's ``Generate`` goes out now: how many others are still arriving."""
        if self._open:
            self._open = False
            self._intake._close(handed_over=True)  # noqa: SLF001 - its own intake
        return self._intake.arriving

    def leave(self) -> None:
        """The request ended without a ``Generate`` (or has sent it: then nothing changes)."""
        if self._open:
            self._open = False
            self._intake._close(handed_over=False)  # noqa: SLF001

"""Generation requests the server is still taking in: how a worker knows that more are coming.

A worker that finds its engine idle starts a step as soon as its ring is
empty. In a burst, requests reach it one by one, as the orchestrator finishes
taking each in (HTTP, parsing, validation), and when the worker admits them
faster than they come it starts on the first few alone. The rest then wait
for that step and pay for one of their own, and reach their first token
later than they would have as one batch (docs/PERFORMANCE.md).

So the HTTP side registers each generation request as it begins
(``Intake.arrive``), says which model it is for once its body names one
(``Arrival.identify``), and the request's ``Arrival`` ends when its
``Generate`` goes out (``hand_over``) or the request ends without one
(``leave``: refused, failed, or its client left). Each ``Generate`` tells the
worker how many more the orchestrator expects for it (``Generate.followers``:
the requests still arriving for its model or for a model not known yet; a
request's choices share its one ``Generate``), and before a batch's first step the
worker waits for them, briefly (``worker/_main.py``). Counting from the
request's dispatch, before its body is read, is what makes the count useful:
when a burst's first ``Generate`` goes out, the others' bodies are mostly
unread still. The count is a hint: a request not identified yet may be for
another model or fail its validation, and the worker's wait for it is
bounded.
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

    # Arriving, their model not known yet (their bodies unread), and by model.
    _unidentified: int = 0
    _by_model: dict[str, int] = attrs.Factory(dict)
    _handed_over: int = 0

    def arrive(self) -> Arrival:
        self._unidentified += 1
        return Arrival(self)

    @property
    def arriving(self) -> int:
        return self._unidentified + sum(self._by_model.values())

    def expected(self, model: str | None) -> int:
        """How many arriving requests may be for ``model`` (None: any)."""
        if model is None:
            return self.arriving
        return self._unidentified + self._by_model.get(model, 0)

    def statistics(self) -> IntakeStatistics:
        return IntakeStatistics(self.arriving, self._handed_over)

    def _identify(self, model: str) -> None:
        self._unidentified -= 1
        self._by_model[model] = self._by_model.get(model, 0) + 1

    def _close(self, model: str | None, *, handed_over: bool) -> None:
        if model is None:
            self._unidentified -= 1
        elif self._by_model[model] > 1:
            self._by_model[model] -= 1
        else:
            del self._by_model[model]
        self._handed_over += handed_over


@attrs.define(eq=False)
class Arrival:
    """One request in the intake, until its ``Generate`` goes out or it ends; either ends it once."""

    _intake: Intake
    _model: str | None = None
    _open: bool = True

    def identify(self, model: str) -> None:
        """The request is for ``model`` (its worker's id, once its body is read)."""
        if self._open and self._model is None:
            self._model = model
            self._intake._identify(model)  # noqa: SLF001 - its own intake

    def hand_over(self) -> int:
        """The request's ``Generate`` goes out now: how many others may still come for its model."""
        if self._open:
            self._open = False
            self._intake._close(self._model, handed_over=True)  # noqa: SLF001
        return self._intake.expected(self._model)

    def leave(self) -> None:
        """The request ended without a ``Generate`` (or has sent it: then nothing changes)."""
        if self._open:
            self._open = False
            self._intake._close(self._model, handed_over=False)  # noqa: SLF001

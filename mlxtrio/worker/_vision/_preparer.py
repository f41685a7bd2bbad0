"""A request's images decoded and processed on a thread of the worker's own, so that its batch decodes meanwhile.

Decoding a large image and running the model's processor over it take a
second or more, and a request may bring several: on the loop's thread that
would stall every sequence of the model. ``Vision.prepare`` uses Pillow and
the processor only (both release the GIL for their heavy parts), never MLX,
whose work stays on the loop's thread; the loop admits the request once its
images are ready (worker/_main.py), as it does for a grammar.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from ..._protocol import Generate
from ._prompt import PreparedImage, Vision

__all__ = ["ImagePreparer"]


class ImagePreparer:
    """One thread for one model's requests' images, in the order they come."""

    def __init__(self, vision: Vision) -> None:
        self._vision = vision
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, request: Generate) -> Future[list[PreparedImage]]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlxtrio-images")
        return self._executor.submit(self._vision.prepare, request)

    @property
    def prepared(self) -> int:
        """Images prepared so far."""
        return self._vision.images_prepared

    def hold(self, request: Generate, prepared: list[PreparedImage]) -> None:
        """Hand a request's prepared images to its admission, which follows on the loop's thread."""
        self._vision.hold(request.request_id, prepared)

    def release(self, request: Generate) -> None:
        """Drop what ``hold`` kept for a request whose admission did not take it."""
        self._vision.forget(request.request_id)

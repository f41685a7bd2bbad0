"""Images in: vision-language models through mlx-vlm, in the same worker and engines as text models.

``_load.py`` loads a vision model (mlx-vlm) with its language model as
mlx-lm's; ``_images.py`` decodes an image within limits; ``_prompt.py``
turns a chat request's images into prompt tokens, a prompt cache key and a
prefill, which ``_prefills.py`` runs a chunk per engine step; ``_preparer.py``
decodes and processes a request's images off the loop's thread. ``_demo.py`` builds the ``demo-vision`` model.
"""

from ._load import VisionParts, load_vision
from ._prefills import Prefilled, VisionPrefills, ready_choices
from ._positions import mark_turned
from ._preparer import ImagePreparer
from ._prompt import PreparedImage, Vision, VisionTokens

__all__ = ["ImagePreparer", "PreparedImage", "Prefilled", "Vision", "VisionParts", "VisionPrefills", "VisionTokens", "load_vision", "mark_turned", "ready_choices"]

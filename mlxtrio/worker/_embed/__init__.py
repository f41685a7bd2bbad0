"""Embeddings: a worker whose model embeds (``Embed`` in, ``Embedded`` out) instead of generating.

``_files.py`` reads what a model's files say (an embedding model or not, encoder
or decoder, pooling, normalisation, context); ``_model.py`` loads it (mlx-embeddings
for an encoder, mlx-lm for a decoder) and pools a pass; ``_inputs.py`` tokenizes
and checks a request's inputs; ``_passes.py`` cuts inputs into passes; ``_loop.py``
is the worker's loop for such a model; ``_demo.py`` builds ``demo-embed`` and
``demo-embed-decoder``.
"""

from ._demo import ensure_demo_embed_decoder_model, ensure_demo_embed_model
from ._files import is_embedding_model
from ._load import Embedder, load_embedder
from ._loop import serve_embed

__all__ = ["Embedder", "ensure_demo_embed_decoder_model", "ensure_demo_embed_model", "is_embedding_model", "load_embedder", "serve_embed"]

"""Ollama's API surface: /api/chat, /api/generate, /api/embed, /api/embeddings, /api/tags, /api/ps, /api/show, /api/version.

``_router`` holds the routes, ``_schemas`` the request bodies and their
checks, ``_serving`` the translation of a request into one
``GenerationRequest``, ``_answer`` the answer and its NDJSON stream,
``_embed`` the embeddings (on the core OpenAI's /v1/embeddings uses),
``_models`` the catalog and the loaded models in Ollama's shapes, and
``_errors`` Ollama's error body.
"""

from .._surface import Surface
from ._errors import ollama_error
from ._router import GENERATION_PATHS, PREFIX, ollama_routes, running

__all__ = ["SURFACE", "running"]

SURFACE = Surface(name="ollama", routes=ollama_routes, generation_paths=GENERATION_PATHS, error_body=ollama_error, path_prefixes=(PREFIX,))

"""mlxtrio: an OpenAI-compatible LLM inference server for MLX on Trio."""

__version__ = "0.1.0"

"""The worker process: owns MLX and mlx-lm for one model. Knows nothing about HTTP.

Started by the orchestrator as ``python -m mlxtrio.worker CONFIG_JSON CHANNEL_JSON``.
"""

"""The worker process: owns MLX and mlx-lm for one model, and speaks only _protocol/'s messages, to its orchestrator.

Started by the orchestrator as ``python -m mlxtrio.worker CONFIG_JSON CHANNEL_JSON``.
"""

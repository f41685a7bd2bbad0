"""The OpenAI API surface: chat completions, completions and models."""

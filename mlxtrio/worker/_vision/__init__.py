"""Images in: models that read pictures along with text, through mlx-vlm."""

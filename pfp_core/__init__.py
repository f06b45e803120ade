"""PFP engine: memory-compressed autoregressive video generation (pure PyTorch, no ComfyUI import)."""

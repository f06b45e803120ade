"""The model room: the networks and what they read and write. The Wan DiT and its attention and RoPE, the memory
encoder that compresses a history of latents into memory tokens (all at once, or incrementally slab by slab), the
context a chunk sees (recent latents plus memory), rectified flow, the VAEs, the text encoder and checkpoint
loading. Pure PyTorch: nothing here knows about chunks, runs on disk, training or ComfyUI.
"""

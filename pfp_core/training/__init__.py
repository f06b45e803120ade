"""The training room: pretraining and finetuning the memory encoder and DiT (the loop, LoRA, several processes),
the data they learn from (procedural videos, the captioned story world, folders of the user's videos, precomputed
text embeddings), the recipe of the bundled tiny pair and the export of trained weights for ComfyUI.
"""

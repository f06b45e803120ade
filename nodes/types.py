"""The pack's socket types."""
from comfy_api.latest import io

MemoryEncoderType = io.Custom("MEMORY_ENCODER")
MemoryType = io.Custom("PFP_MEMORY")
StoryboardType = io.Custom("PFP_STORYBOARD")

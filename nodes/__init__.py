"""ComfyUI adapters (V3 nodes). The only package of the pack that imports comfy."""
from comfy_api.latest import ComfyExtension, io


class PFPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []


async def comfy_entrypoint() -> PFPExtension:
    return PFPExtension()

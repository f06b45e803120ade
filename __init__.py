"""ComfyUI entry point of the PFP node pack: registers nodes/ and the web extension.

Outside ComfyUI (pytest collects this folder as a package) there is no comfy_api, and nothing is registered.
"""
import importlib.util

WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401

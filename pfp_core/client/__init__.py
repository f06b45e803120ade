"""The client room: queueing API-format workflows on ComfyUI servers over HTTP and collecting their videos
(`python -m pfp_core queue`). Needs no torch and none of the model.
"""

"""The generation room: the loop that makes a long video chunk after chunk. The storyboard says what each chunk
shows, the generator keeps the latent history and asks the model for the next chunk, the chunk store keeps every
finished chunk on disk so an interrupted run resumes, and the pipeline wires the standalone engine (`generate`).
Also the web timeline's plan request and the ComfyUI runs' output folders.
"""

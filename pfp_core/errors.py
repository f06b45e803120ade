"""Exceptions shared by the engine and its front ends, importable without torch."""


class GenerationCancelled(RuntimeError):
    """Raised between sampling steps when the caller cancels; finished chunks stay on disk."""

"""The errors the engine reports as one line, shared by its modules."""


class RestoreError(Exception):
    """A restore that cannot go on: one line, naming the image or node."""

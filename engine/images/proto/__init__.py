"""engine's own .proto schemas (CRIU's field numbers) and their generated code.

Regenerate after editing a .proto: `python -m engine.images.proto.build`.
"""

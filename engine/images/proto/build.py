"""Regenerate the *_pb2.py modules from the .proto files beside this one.

Needs grpcio-tools (a development tool only): `python -m engine.images.proto.build`.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def main() -> int:
    from grpc_tools import protoc
    protos = sorted(str(p.relative_to(ROOT)) for p in HERE.glob("*.proto"))
    return protoc.main(["protoc", f"-I{ROOT}", f"--python_out={ROOT}", *protos])


if __name__ == "__main__":
    sys.exit(main())

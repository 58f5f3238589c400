#!/usr/bin/env python3
"""Regenerates kvtier_vllm/_proto from the Rust workspace's .proto files.

    python scripts/gen_proto.py            # rewrite the committed files
    python scripts/gen_proto.py --check    # exit 1 when they are stale

Needs ``grpcio-tools`` (installed in the connector's test venv by
``scripts/setup.sh``). Imports are rewritten to live under
``kvtier_vllm._proto`` so that the package does not claim a top-level
``kvtier`` module.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = HERE.parent.parent / "proto" / "proto"
OUT = HERE / "kvtier_vllm" / "_proto"
FILES = ["kvtier/v1/cache.proto", "kvtier/v1/agent.proto"]


def generate(dest: pathlib.Path) -> None:
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={dest}",
        f"--pyi_out={dest}",
        f"--grpc_python_out={dest}",
        *FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for path in dest.rglob("*.py*"):
        text = path.read_text()
        text = text.replace("from kvtier.v1 import", "from kvtier_vllm._proto.kvtier.v1 import")
        path.write_text(text)
    for pkg in [dest / "kvtier", dest / "kvtier" / "v1"]:
        (pkg / "__init__.py").write_text("")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not args.check:
        generate(OUT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp)
        generate(fresh)
        stale = [
            str(p.relative_to(fresh))
            for p in sorted(fresh.rglob("*"))
            if p.is_file()
            and (
                not (OUT / p.relative_to(fresh)).is_file()
                or (OUT / p.relative_to(fresh)).read_text() != p.read_text()
            )
        ]
    if stale:
        print("stale generated files (run scripts/gen_proto.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generates the Python code of protos/: messages, gRPC stubs, and type stubs for both.

    python scripts/protogen.py gen                                # what `make gen` runs
    python scripts/protogen.py --imports-only build/protodeps     # for buf (`make lint`)

The one owner of the protoc invocation: `make gen`, scripts/protodoc.py and the test that gen/
is fresh all come here. protoc is grpc_tools' (it ships google/protobuf/*.proto); the
google/api/*.proto the protos import (field_behavior) come from the googleapis-common-protos
wheel, the runtime dependency whose *_pb2 modules the generated code imports. mypy-protobuf's
plugins write the .pyi stubs: messages (*_pb2.pyi) and sync + asyncio gRPC stubs
(*_pb2_grpc.pyi), which type checkers read through gen/seckill/py.typed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from google.api import field_behavior_pb2

PROTOS = Path(__file__).resolve().parent.parent / "protos"
# The .proto files beside the wheel's google/api/*_pb2.py: site-packages.
GOOGLEAPIS = Path(field_behavior_pb2.__file__).resolve().parents[2]
PLUGINS = Path(sys.executable).parent  # mypy-protobuf's protoc-gen-mypy{,_grpc} scripts


def proto_files() -> list[str]:
    """Every .proto under protos/, relative to it, in name order."""
    return sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))


def protoc(args: Sequence[str], protos: Sequence[str] | None = None,
           root: Path = PROTOS) -> None:
    """Runs protoc on `protos` (paths under `root`; default: all of protos/), with google/api
    and google/protobuf on the include path."""
    includes = ["-I", str(root), "-I", str(GOOGLEAPIS)]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *includes, *args,
                    *(proto_files() if protos is None else protos)], check=True)


def generate(out: Path) -> None:
    """Writes seckill/v1/*_pb2{,_grpc}.py{,i} under `out`, and the packages' markers."""
    out.mkdir(parents=True, exist_ok=True)
    protoc([f"--plugin=protoc-gen-mypy={PLUGINS / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={PLUGINS / 'protoc-gen-mypy_grpc'}",
            f"--python_out={out}", f"--grpc_python_out={out}",
            f"--mypy_out=quiet:{out}", f"--mypy_grpc_out=quiet:{out}"])
    # protoc writes no __init__.py: these make `seckill.v1` a regular package; py.typed makes
    # type checkers read the .pyi stubs of an installed copy (PEP 561).
    for marker in ("__init__.py", "v1/__init__.py", "py.typed"):
        (out / "seckill" / marker).touch()


def copy_imports(out: Path) -> None:
    """Copies the wheel's google/api/*.proto that protos/ imports under `out`: buf resolves
    imports only within its workspace (buf.yaml), and reaches no registry here."""
    for proto in proto_files():
        for name in re.findall(r'^import "(google/api/[^"]+)";', (PROTOS / proto).read_text(),
                               re.M):
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(GOOGLEAPIS / name, out / name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path, help="the output folder (gen)")
    parser.add_argument("--imports-only", action="store_true",
                        help="only copy the imported google/api protos to OUT (for buf)")
    args = parser.parse_args(argv)
    (copy_imports if args.imports_only else generate)(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Generates the gRPC stubs from proto/ at build and install time (they are never committed)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_stubs() -> None:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    # Type information: .pyi for the messages (protoc) and for the service stubs (mypy-protobuf).
    mypy_grpc = shutil.which("protoc-gen-mypy_grpc", path=_scripts_path())
    if mypy_grpc is None:
        raise SystemExit("protoc-gen-mypy_grpc (mypy-protobuf, a build requirement) is missing")
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={ROOT}",
            f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}", f"--mypy_grpc_out={ROOT}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed to generate the gRPC stubs from proto/")
    (ROOT / "kqd" / "v1" / "__init__.py").write_text('"""Generated from proto/kqd/v1."""\n')


def _scripts_path() -> str:
    """Where the build environment's console scripts are: beside its interpreter, then PATH."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


class BuildWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})

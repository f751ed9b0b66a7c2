"""Generate natlens.proto's Python code into proto/ (or check it is current).

protoc is run with a virtual include path so the generated modules import each other
as ``natlens.proto.*`` rather than as bare top-level names.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ("natlens_pb2.py", "natlens_pb2_grpc.py", "natlens_pb2.pyi")


def generate(out: Path) -> None:
    args = [
        "protoc",
        f"--proto_path=natlens/proto={ROOT / 'proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        "natlens/proto/natlens.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    check = "--check" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        built = Path(tmp) / "natlens" / "proto"
        stale = [n for n in GENERATED
                 if not (ROOT / "proto" / n).exists()
                 or not filecmp.cmp(built / n, ROOT / "proto" / n, shallow=False)]
        if check:
            if stale:
                print(f"generated code is stale: {', '.join(stale)}; run make proto",
                      file=sys.stderr)
                return 1
            return 0
        for n in GENERATED:
            shutil.copyfile(built / n, ROOT / "proto" / n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Worker entry point of the local executor's subprocesses: ``python -m mmbench_cli.ablate.worker < spec.json``.

Reads one cell spec (JSON) on stdin, runs it with ``run_cell`` and exits 0 if the cell is done, else 1.
"""

from __future__ import annotations

import json
import sys

from mmbench_cli.ablate.executors import run_cell


def main() -> int:
    """Run the cell whose spec is on stdin; the exit code says whether it is done."""
    spec = json.loads(sys.stdin.read())
    record = run_cell(spec)
    return 0 if record.get("state") == "done" else 1


if __name__ == "__main__":
    sys.exit(main())

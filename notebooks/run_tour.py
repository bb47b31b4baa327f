"""Re-run notebooks/tour.ipynb top to bottom and store its fresh outputs in it.

    python notebooks/run_tour.py            # from the repository root; about two minutes on 2 CPU cores
    python notebooks/run_tour.py --check    # run it, change nothing, fail on any error (what the test does)

The notebook runs in a real Jupyter kernel (nbclient + ipykernel, in the `test` extra) that imports
the `alexnet` of this checkout. What is stored is what a reader sees, with nothing that changes from
run to run or machine to machine: no execution timestamps, no kernel or Python version. tests/test_tour.py
re-executes it the same way and compares.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "tour.ipynb"
TIMEOUT_S = 600  # per cell: a generous bound for a loaded 2-core machine (the whole notebook takes ~2 min)
METADATA = {  # the notebook's own metadata, fixed: nothing of the machine that ran it
    "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def execute(path: Path = NOTEBOOK, *, threads: int | None = None, timeout: int = TIMEOUT_S):
    """Run the notebook at `path` in a fresh kernel (working directory: the repository root) and
    return it with its new outputs, cleaned (see `clean`). threads: OMP_NUM_THREADS for the kernel
    (None: the machine's default). Raises nbclient's CellExecutionError on the first failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    # The kernel inherits this process's environment: make it import this checkout's package.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(ROOT)}}
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    return clean(nb)


def clean(nb):
    """The notebook without run-dependent details: fixed notebook metadata, no per-cell execution
    records, code cells numbered 1, 2, ... in order, and each cell's consecutive prints to one
    stream joined into one output (the kernel splits them wherever its flush timer fires)."""
    nb.metadata = dict(METADATA)
    count = 0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        outputs = []
        for output in cell.outputs:
            if "execution_count" in output:
                output["execution_count"] = count
            previous = outputs[-1] if outputs else None
            if output.output_type == "stream" and previous is not None and previous.output_type == "stream":
                if previous.name == output.name:
                    previous.text += output.text
                    continue
            outputs.append(output)
        cell.outputs = outputs
    return nb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="run the notebook but do not write it back")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernel (default: all cores)")
    args = parser.parse_args(argv)
    import nbformat

    start = time.perf_counter()
    nb = execute(threads=args.threads)
    seconds = time.perf_counter() - start
    if not args.check:
        tmp = NOTEBOOK.with_suffix(".ipynb.tmp")
        nbformat.write(nb, tmp)
        os.replace(tmp, NOTEBOOK)  # atomically: an interrupted run leaves the previous notebook
    size = NOTEBOOK.stat().st_size
    print(f"{NOTEBOOK.relative_to(ROOT)}: ran in {seconds:.0f} s; {size / 1e6:.2f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Executes sslab's notebooks headless with the evcxr (Rust) kernel, as CI does.

Usage: execute.py NOTEBOOK.ipynb [...]

Each notebook runs in its own folder with nbclient; any cell error fails the run, and each
notebook must produce at least one image/png output. The executed copies go to
$SSLAB_NB_OUT (default: a temporary folder), so the committed notebooks stay output-free.
Prints each notebook's wall time and the figures it showed.
"""
import os
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def main(paths):
    out_dir = os.environ.get("SSLAB_NB_OUT") or tempfile.mkdtemp(prefix="sslab-nb-")
    os.makedirs(out_dir, exist_ok=True)
    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            kernel_name="rust",
            timeout=int(os.environ.get("SSLAB_NB_CELL_TIMEOUT", "2400")),
            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
        )
        t0 = time.time()
        name = os.path.basename(path)
        try:
            client.execute()
        except CellExecutionError as e:
            failed += 1
            print(f"FAIL {name}: {str(e)[:2000]}", flush=True)
            continue
        finally:
            nbformat.write(nb, os.path.join(out_dir, name))
        secs = time.time() - t0
        images = []
        for i, cell in enumerate(nb.cells):
            for o in cell.get("outputs", []):
                if "image/png" in o.get("data", {}):
                    first = "".join(cell.source).splitlines()[-1][:60]
                    images.append(f"cell {i}: {first}")
        if not images:
            failed += 1
            print(f"FAIL {name}: no image/png output", flush=True)
            continue
        print(f"ok   {name}: {secs:.0f} s, {len(images)} figures", flush=True)
        for im in images:
            print(f"       {im}")
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

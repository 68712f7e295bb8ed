#!/usr/bin/env python3
"""Executes sslab's notebooks headless with the evcxr (Rust) kernel, and keeps the committed
ones current.

Usage:
  execute.py NOTEBOOK.ipynb [...]          execute; the executed copies go to $SSLAB_NB_OUT
                                           (default: a temporary folder), as CI does
  execute.py --write NOTEBOOK.ipynb [...]  execute and save each notebook in place with its
                                           outputs and the hash of its code cells
  execute.py --check NOTEBOOK.ipynb [...]  no kernel: fail if a notebook's code cells changed
                                           since its outputs were written (or those outputs came
                                           from another budget or show no figure); a notebook
                                           never written with outputs is listed, not failed

Each notebook runs in its own folder with nbclient; any cell error fails the run, and each
notebook must produce at least one image/png output. Prints each notebook's wall time and the
figures it showed. `--write` runs at the budget `SSLAB_BUDGET` selects (unset: the full one,
which is what the committed notebooks carry); `--check` refuses outputs written at another
budget. `--check` needs only the standard library, so it runs before any toolchain is installed.
"""
import datetime
import hashlib
import json
import os
import sys
import tempfile
import time

# Where the notebook's metadata keeps what `--write` recorded.
META_KEY = "sslab"


def cell_source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def source_hash(cells):
    """SHA-256 over the code cells' sources, in order (markdown edits do not stale outputs)."""
    h = hashlib.sha256()
    for cell in cells:
        if cell.get("cell_type") == "code":
            h.update(cell_source(cell).encode("utf-8"))
            h.update(b"\0")
    return h.hexdigest()


def figures(cells):
    found = []
    for i, cell in enumerate(cells):
        for o in cell.get("outputs", []):
            if "image/png" in o.get("data", {}):
                last = (cell_source(cell).splitlines() or [""])[-1][:60]
                found.append(f"cell {i}: {last}")
    return found


def check(paths):
    stale = missing = 0
    for path in paths:
        name = os.path.basename(path)
        try:
            with open(path, encoding="utf-8") as f:
                nb = json.load(f)
        except (OSError, ValueError) as e:
            stale += 1
            print(f"FAIL {name}: cannot read: {e}")
            continue
        meta = nb.get("metadata", {}).get(META_KEY, {})
        want = source_hash(nb.get("cells", []))
        if not meta.get("source_sha256"):
            missing += 1
            print(f"--   {name}: no outputs yet (execute.py --write notebooks/{name})")
            continue
        if meta["source_sha256"] != want:
            problem = "code cells changed since the outputs were written"
        elif meta.get("budget") != "full":
            problem = f"outputs written at budget {meta.get('budget')!r}, not the full one"
        elif not figures(nb.get("cells", [])):
            problem = "no image/png output"
        else:
            print(f"ok   {name}: outputs of {meta.get('executed', '?')} match its code")
            continue
        stale += 1
        print(f"FAIL {name}: {problem}; rerun: .venv-nb/bin/python notebooks/execute.py "
              f"--write notebooks/{name}")
    print(f"{len(paths) - stale - missing} current, {stale} stale, {missing} without outputs")
    return 1 if stale else 0


def execute(paths, write):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    out_dir = None
    if not write:
        out_dir = os.environ.get("SSLAB_NB_OUT") or tempfile.mkdtemp(prefix="sslab-nb-")
        os.makedirs(out_dir, exist_ok=True)
    budget = os.environ.get("SSLAB_BUDGET") or "full"
    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            kernel_name="rust",
            # A cell may run for 40 minutes at the small budget (a catch for a hung kernel in
            # CI); at the full budget 05's cell of eight trainings takes about 45 minutes on two
            # Zen 4 cores, so it gets two hours.
            timeout=int(os.environ.get("SSLAB_NB_CELL_TIMEOUT") or (2400 if budget == "small" else 7200)),
            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
            # Saved notebooks carry no per-cell timestamps: reruns change only what changed.
            record_timing=not write,
        )
        t0 = time.time()
        name = os.path.basename(path)
        ok = True
        try:
            client.execute()
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
            ok = False
            print(f"FAIL {name}: {str(e)[:2000]}", flush=True)
        secs = time.time() - t0
        images = figures(nb.cells)
        if ok and not images:
            ok = False
            print(f"FAIL {name}: no image/png output", flush=True)
        if write and ok:
            nb.metadata[META_KEY] = {
                "source_sha256": source_hash(nb.cells),
                "budget": budget,
                "executed": datetime.date.today().isoformat(),
                "seconds": round(secs),
            }
            nbformat.write(nb, path)
        elif not write:
            nbformat.write(nb, os.path.join(out_dir, name))
        if not ok:
            failed += 1
            continue
        print(f"ok   {name}: {secs:.0f} s, {len(images)} figures", flush=True)
        for im in images:
            print(f"       {im}")
    print(f"{len(paths) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main(args):
    mode = args[0] if args and args[0] in ("--write", "--check") else None
    paths = args[1:] if mode else args
    if not paths:
        print(__doc__)
        return 2
    if mode == "--check":
        return check(paths)
    return execute(paths, write=mode == "--write")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

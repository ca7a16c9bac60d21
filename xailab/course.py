"""Course tooling: generate labs from solutions, execute notebooks in place.

    python -m xailab.course make-labs [--check]     # solutions/ -> labs/ (--check: fail on drift)
    python -m xailab.course execute [PATHS] [--html] [--no-save]
    python -m xailab.course slides [PATHS] [--reset] [--check]   # slide metadata from headings
    python -m xailab.course export-slides [PATHS]   # reveal.js HTML in build/slides/

``make-labs`` replaces every block between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` by ``# YOUR CODE HERE`` and a ``raise NotImplementedError``
with the block's ``# HINT:`` line (if any), and clears outputs. ``execute`` runs
notebooks top to bottom (default: every lecture and solution), saves them with
outputs, prints each one's time and, with ``--html``, exports HTML to ``build/``.
``slides`` gives every lecture cell its slide type from the headings (``#``/``##``
start a slide, ``###`` a sub-slide, everything else continues the current one),
keeping types an instructor set by hand unless ``--reset``; ``export-slides``
writes reveal.js slides (nbconvert) to ``build/slides/``. The exported HTML loads
reveal.js from its CDN when opened; offline, present live in JupyterLab with
RISE (``jupyterlab-rise`` is installed): open a lecture and press Alt+R.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
DEFAULT_HINT = "write this part, then run the check below"


def strip_solutions(source: str) -> str:
    """The student version of one cell's source."""
    out, inside, indent, hint = [], False, "", None
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            inside, indent, hint = True, line[: len(line) - len(line.lstrip())], None
            continue
        if stripped == END:
            if not inside:
                raise ValueError(f"'{END}' without '{BEGIN}'")
            out.append(f"{indent}# YOUR CODE HERE")
            out.append(f"{indent}raise NotImplementedError({(hint or DEFAULT_HINT)!r})")
            inside = False
            continue
        if inside:
            m = re.match(r"\s*# HINT:\s*(.*)", line)
            if m:
                hint = m.group(1).strip()
            continue
        out.append(line)
    if inside:
        raise ValueError(f"'{BEGIN}' without '{END}'")
    return "\n".join(out)


def make_lab(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    lab = copy.deepcopy(solution)
    for cell in lab.cells:
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        elif cell.cell_type == "markdown" and BEGIN in cell.source:
            cell.source = re.sub(rf"{BEGIN}.*?{END}", "*Your answer here.*", cell.source, flags=re.S)
    lab.metadata = nbformat.from_dict({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    return lab


def lab_path(solution_path: Path) -> Path:
    return solution_path.parent.parent / "labs" / solution_path.name


def make_labs(check: bool = False, root: Path = ROOT) -> list[Path]:
    """Write labs/ from solutions/; with ``check`` only report labs that are stale."""
    stale = []
    for sol in sorted((root / "solutions").glob("*.ipynb")):
        lab = make_lab(nbformat.read(sol, as_version=4))
        text = nbformat.writes(lab) + "\n"
        target = lab_path(sol)
        if not target.exists() or target.read_text() != text:
            stale.append(target)
            if not check:
                target.parent.mkdir(exist_ok=True)
                target.write_text(text)
    orphans = [p for p in sorted((root / "labs").glob("*.ipynb"))
               if not (root / "solutions" / p.name).exists()]
    return stale + orphans


def slide_type(cell) -> str:
    """The slide type a cell gets from its heading."""
    if cell.cell_type == "markdown":
        first = cell.source.lstrip().split("\n", 1)[0]
        if re.match(r"#{1,2} ", first):
            return "slide"
        if first.startswith("### "):
            return "subslide"
    return "-"


def add_slide_metadata(nb: nbformat.NotebookNode, reset: bool = False) -> int:
    """Give every cell ``metadata.slideshow.slide_type`` (existing types kept unless
    ``reset``); returns how many cells changed."""
    changed = 0
    for cell in nb.cells:
        show = cell.metadata.get("slideshow", {})
        if "slide_type" in show and not reset:
            continue
        want = slide_type(cell)
        if show.get("slide_type") != want:
            cell.metadata["slideshow"] = {**show, "slide_type": want}
            changed += 1
    return changed


def lecture_paths(paths=None) -> list[Path]:
    return [Path(p) for p in paths] if paths else sorted((ROOT / "lectures").glob("*.ipynb"))


def slides(paths=None, reset: bool = False, check: bool = False) -> list[Path]:
    """Add slide metadata to lectures in place; returns the notebooks that changed
    (``check``: would change, nothing written)."""
    changed = []
    for path in lecture_paths(paths):
        nb = nbformat.read(path, as_version=4)
        if add_slide_metadata(nb, reset):
            changed.append(Path(path))
            if not check:
                nbformat.write(nb, path)
    return changed


def export_slides(paths=None, out: Path = ROOT / "build" / "slides") -> list[Path]:
    """Export lectures to reveal.js HTML slides (one file per lecture) in ``out``."""
    from nbconvert import SlidesExporter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in lecture_paths(paths):
        nb = nbformat.read(path, as_version=4)
        add_slide_metadata(nb)                    # lectures without metadata still get slides
        body, _ = SlidesExporter().from_notebook_node(nb)
        target = out / (Path(path).stem + ".slides.html")
        target.write_text(body)
        written.append(target)
        print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
    return written


def execute(paths: list[Path], html: bool = False, save: bool = True, timeout: int = 600) -> dict:
    """Execute notebooks in place (cwd = the notebook's folder); returns seconds per notebook."""
    from nbclient import NotebookClient

    times = {}
    for path in paths:
        path = Path(path).resolve()
        nb = nbformat.read(path, as_version=4)
        start = time.time()
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        times[path] = time.time() - start
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {times[path]:.1f} s", flush=True)
        if save:
            nbformat.write(nb, path)
        if html:
            from nbconvert import HTMLExporter
            out = ROOT / "build" / path.parent.name / (path.stem + ".html")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(HTMLExporter().from_notebook_node(nb)[0])
    print(f"total: {sum(times.values()):.1f} s for {len(times)} notebooks")
    return times


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m xailab.course", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-labs", help="write labs/ from solutions/")
    m.add_argument("--check", action="store_true", help="exit 1 if any lab is stale, write nothing")
    e = sub.add_parser("execute", help="execute notebooks in place")
    e.add_argument("paths", nargs="*", type=Path)
    e.add_argument("--html", action="store_true", help="also export HTML to build/")
    e.add_argument("--no-save", action="store_true", help="do not write outputs back")
    s = sub.add_parser("slides", help="slide metadata for lectures from their headings")
    s.add_argument("paths", nargs="*", type=Path)
    s.add_argument("--reset", action="store_true", help="recompute types set by hand too")
    s.add_argument("--check", action="store_true", help="exit 1 if any lecture lacks metadata")
    x = sub.add_parser("export-slides", help="reveal.js slides of the lectures in build/slides/")
    x.add_argument("paths", nargs="*", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "slides":
        changed = slides(args.paths, reset=args.reset, check=args.check)
        for c in changed:
            print(("missing slide metadata: " if args.check else "updated: ") + str(c))
        if args.check and changed:
            sys.exit(1)
        return
    if args.cmd == "export-slides":
        export_slides(args.paths)
        return
    if args.cmd == "make-labs":
        stale = make_labs(check=args.check)
        for s in stale:
            print(("stale: " if args.check else "wrote: ") + str(s.relative_to(ROOT)))
        if args.check and stale:
            print("labs/ is out of date: run `python -m xailab.course make-labs`", file=sys.stderr)
            sys.exit(1)
    else:
        paths = args.paths or sorted((ROOT / "lectures").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
        execute(paths, html=args.html, save=not args.no_save)


if __name__ == "__main__":
    main()

"""Course tooling: generate labs from solutions, execute notebooks in place.

    python -m xailab.course make-labs [--check]     # solutions/ -> labs/ (--check: fail on drift)
    python -m xailab.course execute [PATHS] [--html] [--no-save]
    python -m xailab.course slides [PATHS] [--reset] [--check]   # slide metadata from headings
    python -m xailab.course export-slides [PATHS]   # reveal.js HTML in build/slides/
    python -m xailab.course grading FOLDER [NN ...]  # nbgrader course folder, labs as assignments

``make-labs`` replaces every block between ``### BEGIN SOLUTION`` and
``### END SOLUTION`` by ``# YOUR CODE HERE`` and a ``raise NotImplementedError``
that says what to write (the block's ``# STUB:`` line, or the exercise and function),
drops ``# NBVAL_*`` notes, adds nbgrader cell metadata, clears outputs, and collects
the ``# HINT 1:``, ``# HINT 2:`` ... tiers into ``xailab/checks/hints.json``, which the
checks reveal one by one after failed attempts. ``execute`` runs
notebooks top to bottom (default: every lecture and solution), saves them with
outputs, prints each one's time and, with ``--html``, exports HTML to ``build/``.
``slides`` gives every lecture cell its slide type from the headings (``#``/``##``
start a slide, ``###`` a sub-slide, everything else continues the current one),
keeping types an instructor set by hand unless ``--reset``; ``export-slides``
writes reveal.js slides (nbconvert) to ``build/slides/``. Decks and HTML load
reveal.js, MathJax and their fonts from ``build/assets/`` (``xailab.offline``), so they
work without a network; to present live, use RISE in JupyterLab (Alt+R).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
DEFAULT_HINT = "write this part, then run the check below"


HINT = re.compile(r"\s*# HINT(?:\s+(\d+))?:\s*(.*)")
STUB = re.compile(r"\s*# STUB:\s*(.*)")
CHECK_CALL = re.compile(r"checks\.(lab\d+)\.(check_\w+)\(")
CONTRIBUTOR_NOTE = re.compile(r"^\s*# NBVAL_\w+\s*$")


def _blocks(source: str):
    """Yield (kind, lines) for the parts of a cell: "code" outside and "solution" inside
    the solution markers (with the marker line's indentation as third item)."""
    inside, indent, block, out = False, "", [], []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"'{BEGIN}' inside a solution block")
            if out:
                yield "code", out, ""
            inside, indent, block, out = True, line[: len(line) - len(line.lstrip())], [], []
        elif stripped == END:
            if not inside:
                raise ValueError(f"'{END}' without '{BEGIN}'")
            yield "solution", block, indent
            inside = False
        elif inside:
            block.append(line)
        else:
            out.append(line)
    if inside:
        raise ValueError(f"'{BEGIN}' without '{END}'")
    if out:
        yield "code", out, ""


def hints_of(source: str) -> list[str]:
    """The hint tiers written in a cell's solution blocks (``# HINT 1:``, ``# HINT 2:`` ...;
    a bare ``# HINT:`` is the next tier), in order."""
    tiers = []
    for kind, lines, _ in _blocks(source):
        if kind == "solution":
            for line in lines:
                m = HINT.match(line)
                if m:
                    tiers.append((int(m.group(1)) if m.group(1) else len(tiers) + 1, m.group(2).strip()))
    return [text for _, text in sorted(tiers, key=lambda t: t[0])]


def strip_solutions(source: str, stub: str | None = None) -> str:
    """The student version of one cell's source: each solution block becomes
    ``# YOUR CODE HERE`` and a ``raise NotImplementedError`` whose message says what to
    write (the block's ``# STUB:`` line, else ``stub``, else a default); hints are removed."""
    out = []
    for kind, lines, indent in _blocks(source):
        if kind == "code":
            out.extend(lines)
            continue
        own = next((m.group(1).strip() for m in map(STUB.match, lines) if m), None)
        out.append(f"{indent}# YOUR CODE HERE")
        out.append(f"{indent}raise NotImplementedError({(own or stub or DEFAULT_HINT)!r})")
    return "\n".join(out)


def student_source(source: str, stub: str | None = None) -> str:
    """A code cell as students see it: solutions stripped, contributor notes removed."""
    lines = strip_solutions(source, stub).splitlines()
    return "\n".join(l for l in lines if not CONTRIBUTOR_NOTE.match(l))


def exercise_cells(nb: nbformat.NotebookNode):
    """Yield (cell index, function name, exercise number) for every code cell with a
    solution block; the number comes from the last '## Exercise N' heading above it."""
    number = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            m = re.search(r"^#+\s*Exercise\s+(\w+)", cell.source, re.M | re.I)
            number = m.group(1) if m else number
        elif BEGIN in cell.source:
            m = re.search(r"^def (\w+)", cell.source, re.M)
            yield i, (m.group(1) if m else f"cell_{i}"), number


def lab_id(path: Path) -> str:
    return "lab" + Path(path).name[:2]


def exercise_table(solutions) -> dict:
    """``{function: {"lab", "number", "hints"}}`` of every exercise of ``solutions``."""
    table = {}
    for path in solutions:
        nb = nbformat.read(path, as_version=4)
        for i, name, number in exercise_cells(nb):
            if name in table:
                raise ValueError(f"exercise function {name!r} appears twice ({table[name]['lab']} and "
                                 f"{lab_id(path)}): give each exercise its own name")
            table[name] = {"lab": lab_id(path), "number": number, "hints": hints_of(nb.cells[i].source)}
    return table


def _stub(name: str, number) -> str:
    what = f"exercise {number}: " if number else ""
    return f"{what}write {name} as its docstring says, then run the check below"


def grading_metadata(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """nbgrader cell metadata (schema 3): solution cells for the exercises, an autograded
    test cell worth one point for every check, manually graded written answers, and
    the instructions locked (read-only). Ids depend only on the cell's role and order."""
    names = {i: name for i, name, _ in exercise_cells(nb)}
    seen = set()
    for i, cell in enumerate(nb.cells):
        meta = {"schema_version": 3, "grade": False, "solution": False, "locked": False}
        check = CHECK_CALL.search(cell.source) if cell.cell_type == "code" else None
        if i in names:
            meta.update(solution=True, grade_id=f"solution_{names[i]}")
        elif check:
            meta.update(grade=True, locked=True, points=1, grade_id=f"{check.group(2)}_{i}")
        elif cell.cell_type == "markdown" and BEGIN in cell.source:
            meta.update(grade=True, solution=True, points=1, grade_id=f"answer_{i}")
        elif cell.cell_type == "markdown":
            meta.update(locked=True, grade_id=f"text_{i}")
        else:
            cell.metadata.pop("nbgrader", None)
            continue
        assert meta["grade_id"] not in seen
        seen.add(meta["grade_id"])
        cell.metadata["nbgrader"] = meta
    return nb


def make_lab(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    lab = grading_metadata(copy.deepcopy(solution))
    stubs = {i: _stub(name, number) for i, name, number in exercise_cells(solution)}
    for i, cell in enumerate(lab.cells):
        if cell.cell_type == "code":
            cell.source = student_source(cell.source, stubs.get(i))
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


def grading_source(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The nbgrader source version of a solution: nbgrader metadata, solution markers
    kept (nbgrader removes them on release), hints and contributor notes removed,
    outputs cleared."""
    nb = grading_metadata(copy.deepcopy(solution))
    for cell in nb.cells:
        if cell.cell_type == "code":
            lines = [l for l in cell.source.splitlines()
                     if not (CONTRIBUTOR_NOTE.match(l) or HINT.match(l) or STUB.match(l))]
            cell.source = "\n".join(lines)
            cell.outputs, cell.execution_count = [], None
    return nb


def lab_path(solution_path: Path) -> Path:
    return solution_path.parent.parent / "labs" / solution_path.name


def make_labs(check: bool = False, root: Path = ROOT) -> list[Path]:
    """Write labs/ and the checks' hint file from solutions/; with ``check`` only report
    what is stale."""
    stale = []
    solutions = sorted((root / "solutions").glob("*.ipynb"))
    hints = root / "xailab" / "checks" / "hints.json"
    text = json.dumps(exercise_table(solutions), indent=1, ensure_ascii=False) + "\n"
    if not hints.exists() or hints.read_text() != text:
        stale.append(hints)
        if not check:
            hints.write_text(text)
    for sol in solutions:
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


NBGRADER_CONFIG = """\
# nbgrader course folder written by `python -m xailab.course grading`
c = get_config()  # noqa: F821
c.CourseDirectory.root = {root!r}
c.CourseDirectory.course_id = "xailab"
c.ExecutePreprocessor.timeout = 600
"""


def grading(folder: Path, labs=None, root: Path = ROOT) -> list[Path]:
    """Write an nbgrader course folder: ``nbgrader_config.py`` and ``source/labNN/``
    with the grading source of each lab (all labs, or those numbered in ``labs``)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(root=str(folder)))
    written = []
    for sol in sorted((root / "solutions").glob("*.ipynb")):
        if labs and sol.name[:2] not in {f"{int(n):02d}" for n in labs}:
            continue
        target = folder / "source" / lab_id(sol) / sol.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(grading_source(nbformat.read(sol, as_version=4)), target)
        written.append(target)
    return written


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
    """Export lectures to reveal.js HTML slides (one file per lecture) in ``out``; their
    reveal.js and MathJax are copied to ``out/../assets``."""
    from xailab.offline import export_html

    out = Path(out)
    written = []
    for path in lecture_paths(paths):
        nb = nbformat.read(path, as_version=4)
        add_slide_metadata(nb)                    # lectures without metadata still get slides
        target = export_html(nb, out / (Path(path).stem + ".slides.html"), slides=True, build=out.parent)
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
            from xailab.offline import export_html
            export_html(nb, ROOT / "build" / path.parent.name / (path.stem + ".html"))
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
    g = sub.add_parser("grading", help="an nbgrader course folder with the labs as assignments")
    g.add_argument("folder", type=Path)
    g.add_argument("labs", nargs="*", help="lab numbers (default: all)")
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
    if args.cmd == "grading":
        for path in grading(args.folder, args.labs):
            print(f"wrote {path}")
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

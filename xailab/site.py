"""The course website: Sphinx + MyST-NB over the executed lectures, built offline.

    python -m xailab.site [--out build/site] [--solutions download|hidden]
    bash course.sh --site [--solutions hidden]

``stage`` copies ``docs/`` (Sphinx configuration and home page), the executed lectures
(widget outputs replaced by a note, as in the exported slides) and the labs and
solutions as downloads into ``build/site-src/``, and writes ``syllabus.md``: one row per
lecture with its title, estimated time and download links. ``build`` runs Sphinx on it
without executing anything; MathJax 3 is copied from ``node_modules`` so equations
render with no network. With ``--solutions hidden`` the site offers only the labs.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from xailab import offline

ROOT = Path(__file__).resolve().parent.parent
SOLUTION_CHOICES = ("download", "hidden")


def lecture_info(path: Path) -> dict:
    """Title and estimated time of a lecture, read from its first markdown cell."""
    nb = nbformat.read(path, as_version=4)
    first = next(c.source for c in nb.cells if c.cell_type == "markdown")
    title = re.search(r"^#\s+(.+)$", first, re.M)
    minutes = re.search(r"\*\*Estimated time:\*\*\s*about\s+(\d+)\s+minutes", first)
    return {"title": title.group(1).strip() if title else path.stem,
            "minutes": int(minutes.group(1)) if minutes else None}


def syllabus(lectures, solutions: str = "download", root: Path = ROOT) -> str:
    """The syllabus table (MyST markdown): lecture link, time, lab and solution downloads."""
    head = ["| | Lecture | Time | Lab |" + (" Solution |" if solutions == "download" else "")]
    head.append("|---|---|---|---|" + ("---|" if solutions == "download" else ""))
    rows = []
    for path in lectures:
        info, name = lecture_info(path), Path(path).name
        number, title = name[:2], info["title"].split("·", 1)[-1].strip()
        minutes = f"about {info['minutes']} min" if info["minutes"] else ""
        row = f"| {number} | [{title}](lectures/{Path(path).stem}.ipynb) | {minutes} |"
        lab = root / "labs" / name
        row += f" {{download}}`lab <downloads/labs/{name}>` |" if lab.exists() else " |"
        if solutions == "download":
            sol = root / "solutions" / name
            row += f" {{download}}`solution <downloads/solutions/{name}>` |" if sol.exists() else " |"
        rows.append(row)
    return "\n".join(head + rows) + "\n"


def stage(source: Path, solutions: str = "download", root: Path = ROOT) -> Path:
    """Write the Sphinx source folder ``source`` (replaced if it exists)."""
    if solutions not in SOLUTION_CHOICES:
        raise ValueError(f"solutions must be one of {SOLUTION_CHOICES}, not {solutions!r}")
    source = Path(source)
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(root / "docs", source)
    lectures = sorted((root / "lectures").glob("*.ipynb"))
    (source / "lectures").mkdir()
    for path in lectures:
        nb = offline.without_widgets(nbformat.read(path, as_version=4))
        nbformat.write(nb, source / "lectures" / path.name)
    folders = ["labs"] + (["solutions"] if solutions == "download" else [])
    for folder in folders:
        (source / "downloads" / folder).mkdir(parents=True)
        for path in sorted((root / folder).glob("*.ipynb")):
            shutil.copy2(path, source / "downloads" / folder / path.name)
    (source / "syllabus.md").write_text(syllabus(lectures, solutions, root))
    return source


def build(out: Path = ROOT / "build" / "site", solutions: str = "download", root: Path = ROOT) -> Path:
    """Stage and build the website into ``out``; returns the home page."""
    out = Path(out)
    source = stage(out.parent / "site-src", solutions, root)
    mathjax = offline.copy_assets(out.parent) / "mathjax3"
    env = {**os.environ, "XAILAB_SITE_MATHJAX": str(mathjax)}
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", str(source), str(out)]
    subprocess.run(cmd, check=True, env=env)
    home = out / "index.html"
    print(f"wrote {home.relative_to(root) if home.is_relative_to(root) else home}")
    return home


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m xailab.site", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "site", help="output folder")
    p.add_argument("--solutions", choices=SOLUTION_CHOICES, default="download",
                   help="offer the solutions as downloads, or leave them out")
    args = p.parse_args(argv)
    build(args.out, args.solutions)


if __name__ == "__main__":
    main()

"""Exported notebooks that open without a network: local reveal.js, MathJax, jQuery.

nbconvert's HTML and reveal.js exporters link their JavaScript and fonts from CDNs.
``copy_assets`` copies the files they need from ``node_modules/`` (installed by
``scripts/setup.sh`` with ``npm ci`` from ``package.json``) into ``build/assets/``,
and ``html_exporter``/``slides_exporter`` return exporters whose every link points
there by a relative path, so a ``build/`` folder copied to a USB stick still works.

Interactive widgets need a running kernel, so exported pages show a one-line note in
their place instead of loading the widget manager from a CDN.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[interactive widget: open this notebook in JupyterLab and run it to use it]"

# folder in build/assets -> (npm package, the parts of it the pages load)
PARTS = {
    "reveal.js": ("reveal.js", ["dist", "plugin"]),
    "mathjax": ("mathjax", ["MathJax.js", "config", "extensions", "jax/input/TeX", "jax/element",
                            "jax/output/CommonHTML", "localization/en", "fonts/HTML-CSS/TeX/woff"]),
    "mathjax3": ("mathjax3", ["es5/tex-chtml.js", "es5/output/chtml", "es5/input/tex", "es5/ui",
                              "es5/a11y", "es5/sre", "es5/adaptors"]),
    "jquery": ("jquery", ["dist/jquery.min.js"]),
    "requirejs": ("requirejs", ["require.js"]),
}

# The reveal template imports mermaid unconditionally; the lectures draw no diagrams.
REVEAL_TEMPLATE = """{%- extends 'reveal/index.html.j2' -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def package_dir(name: str) -> Path:
    """A package's folder in node_modules, or an error that says how to install it."""
    path = NODE_MODULES / name
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: run `bash scripts/setup.sh` (it runs `npm ci`; "
                                "Node.js with npm must be installed)")
    return path


def copy_assets(build: Path = ROOT / "build") -> Path:
    """Copy the local web assets into ``build/assets`` (once per package version)."""
    assets = Path(build) / "assets"
    for folder, (package, parts) in PARTS.items():
        source = package_dir(package)
        version = (source / "package.json").stat().st_mtime_ns
        stamp = assets / folder / ".copied"
        if stamp.exists() and stamp.read_text() == str(version):
            continue
        shutil.rmtree(assets / folder, ignore_errors=True)
        for part in parts:
            src, dst = source / part, assets / folder / part
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
        stamp.write_text(str(version))
    return assets


def _relative(assets: Path, page_folder: Path) -> str:
    return Path(os.path.relpath(assets, page_folder)).as_posix()


def _point_to_assets(exporter, assets: Path, page_folder: Path):
    rel = _relative(assets, page_folder)
    exporter.mathjax_url = f"{rel}/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"
    exporter.require_js_url = f"{rel}/requirejs/require.js"
    exporter.jquery_url = f"{rel}/jquery/dist/jquery.min.js"
    return exporter


def html_exporter(assets: Path, page_folder: Path):
    """An nbconvert HTMLExporter (lab template) whose pages load only local files."""
    from nbconvert import HTMLExporter

    return _point_to_assets(HTMLExporter(), assets, page_folder)


def slides_exporter(assets: Path, page_folder: Path):
    """An nbconvert SlidesExporter whose decks load reveal.js and MathJax from ``assets``."""
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter

    exporter = SlidesExporter(extra_loaders=[DictLoader({"offline_reveal.html.j2": REVEAL_TEMPLATE})])
    exporter.template_file = "offline_reveal.html.j2"
    exporter.reveal_url_prefix = f"{_relative(assets, page_folder)}/reveal.js"
    exporter.reveal_theme = "white"               # its font ships with reveal.js (no Google Fonts)
    return _point_to_assets(exporter, assets, page_folder)


def without_widgets(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose widget outputs are a short note (no widget manager needed)."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if WIDGET_MIME in output.get("data", {}):
                output["data"] = {"text/plain": WIDGET_NOTE}
    return nb


def export_html(nb: nbformat.NotebookNode, target: Path, slides: bool = False,
                build: Path = ROOT / "build") -> Path:
    """Write ``nb`` as an offline HTML page (or reveal.js deck) to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    assets = copy_assets(build)
    make = slides_exporter if slides else html_exporter
    body, _ = make(assets, target.parent).from_notebook_node(without_widgets(nb))
    target.write_text(body)
    return target

"""Sphinx configuration of the course website (``bash course.sh --site``).

``xailab.site`` stages this folder, the executed lectures and the lab downloads into
``build/site-src`` and runs Sphinx with MyST-NB on it; nothing is executed here.
Every asset is local: MathJax 3 comes from ``node_modules`` (``npm ci``), the theme
bundles its own fonts and icons.
"""
import os

project = "xailab: looking inside convolutional networks"
author = "the xailab authors"
extensions = ["myst_nb"]
exclude_patterns = ["downloads/**", "syllabus.md", "**.ipynb_checkpoints"]
master_doc = "index"

nb_execution_mode = "off"            # the notebooks are committed executed
nb_ipywidgets_js = {}                # widgets need a kernel; the pages show a note instead
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "misc.highlighting_failure"]

html_theme = "sphinx_book_theme"
html_title = "xailab course"
html_static_path = [os.environ["XAILAB_SITE_MATHJAX"]] if os.environ.get("XAILAB_SITE_MATHJAX") else []
mathjax_path = "es5/tex-chtml.js"    # relative: served from _static, copied from node_modules/mathjax3
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
}
html_show_sourcelink = False
html_copy_source = False

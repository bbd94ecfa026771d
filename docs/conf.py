"""Sphinx configuration of cbn's documentation (pip install ".[docs]").

Build:   sphinx-build -W --keep-going -n docs docs/_build/html
Doctests of the API examples:   sphinx-build -W -b doctest docs docs/_build/doctest
"""

import cbn

project = "cbn"
author = "the cbn developers"
copyright = "2026, the cbn developers"
version = release = cbn.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_readme_head.txt"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# the docstrings name NumPy types in prose ("ndarray of float32"): not cross-references
# the docstrings give the types (numpydoc); signatures without annotations, whose NumPy
# typing internals have no documentation to link to
autodoc_typehints = "none"
# offline build (no intersphinx): names of other projects stay plain text, as do the
# methods every NamedTuple inherits from tuple
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|torch|dask|typing)(\..*)?"),
    (r"py:obj", r"cbn\.\w+\.(index|count)"),
    # slots, documented in the class's Attributes section
    (r"py:obj", r"cbn\.FrozenBatchNorm\.(num_features|axis)"),
]

doctest_global_setup = "import numpy as np\nimport cbn"

html_theme = "pydata_sphinx_theme"
html_title = f"cbn {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = []

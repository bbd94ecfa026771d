"""The documentation's examples run: every ```python block of docs/ (and of the README),
page by page in one namespace, as a reader would paste them; blocks that need an optional
package skip when it is missing, and recipes written against a framework's collectives
(SyncBN's all_gather) and the blocks marked "# a sketch" are left out."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
OPTIONAL = ("torch", "dask", "keras", "onnx", "onnxruntime", "numba", "ml_dtypes", "jax")


def _imports(code):
    """The top-level packages a block imports."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def _blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.skipif(not (ROOT / "docs").exists(), reason="docs/ not beside the tests")
@pytest.mark.parametrize("page", [p for p in PAGES if p.exists() and _blocks(p)],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    ns = {"__name__": "__docs__"}
    for code in _blocks(page):
        if "all_gather" in code or code.startswith("# a sketch"):  # pseudo-code: a recipe
            continue
        for mod in _imports(code):
            if mod in OPTIONAL:
                pytest.importorskip(mod)
        exec(compile(code, str(page), "exec"), ns)

"""notebooks/tour.ipynb: stored clean and small, and, re-run in a real Jupyter kernel, without errors,
with every figure, and printing what the library computes (and what the stored outputs say).

The re-run takes about two minutes of one core (`-m "not slow and not gpu and not notebook"` leaves it
out); the other tests read the stored notebook only.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the tour's tests need the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "tour.ipynb"
REGENERATE = "run `python notebooks/run_tour.py` to store fresh outputs"

# What no stored output may contain: a machine's paths, clock times.
PATHS = re.compile(r"(/tmp/|/home/|/root/|/Users/|/work/|/private/var/|[A-Z]:\\|ipykernel_\d+)")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def _runner():
    spec = importlib.util.spec_from_file_location("run_tour", ROOT / "notebooks" / "run_tour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stored():
    return nbformat.read(NOTEBOOK, as_version=4)


def _code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def _text(cell) -> str:
    """Everything a code cell printed (streams joined, whatever the kernel's chunking)."""
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def _figures(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.outputs)


def _draws_figure(cell) -> bool:
    """A cell that calls plt.show() or the tour's show(), other than the one defining show()."""
    if "def show(" in cell.source:
        return False
    return "plt.show()" in cell.source or re.search(r"^\s*show\(", cell.source, re.M) is not None


def test_stored_notebook_is_small_clean_and_complete():
    nb = _stored()
    assert NOTEBOOK.stat().st_size < 2_000_000, f"{NOTEBOOK.name} is over 2 MB; make its figures smaller"
    assert nb.metadata == _runner().METADATA, f"notebook metadata carries machine details; {REGENERATE}"
    cells = _code_cells(nb)
    for number, cell in enumerate(cells, start=1):
        where = f"code cell {number} ({cell.source.splitlines()[0][:50]!r})"
        assert cell.execution_count == number, f"{where}: not run in order; {REGENERATE}"
        assert "execution" not in cell.metadata, f"{where}: execution timestamps stored; {REGENERATE}"
        kinds = {out.output_type for out in cell.outputs}
        assert "error" not in kinds, f"{where}: stored with an error"
        assert not any(out.get("name") == "stderr" for out in cell.outputs), f"{where}: stored with a warning"
        if _draws_figure(cell):
            assert _figures(cell) >= 1, f"{where}: its figure is missing; {REGENERATE}"
        text = _text(cell) + "".join(str(out.get("data", {}).get("text/plain", "")) for out in cell.outputs)
        assert not PATHS.search(text), f"{where}: a machine path in the output: {PATHS.search(text).group()}"
        assert not TIMESTAMP.search(text), f"{where}: a clock time in the output"
    silent = [c for c in cells if not c.outputs]
    # the Colab installer, the imports and the clean-up print nothing; everything else shows something
    assert len(silent) <= 3, f"{len(silent)} code cells have no stored output; {REGENERATE}"


def test_colab_cell_installs_only_on_colab(monkeypatch):
    """The first cell does nothing outside Colab; on Colab it pip-installs the package from
    REPOSITORY, and says in one line what to set when REPOSITORY is empty."""
    cell = _code_cells(_stored())[0]
    assert "colab" in cell.metadata.get("tags", []), "the first code cell is the Colab installer"
    calls = []
    monkeypatch.setattr("subprocess.run", lambda args, **kw: calls.append(args))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(cell.source, "colab-cell", "exec"), {})
    assert calls == []  # not on Colab: nothing installed

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)  # as on a fresh Colab machine
    with pytest.raises(SystemExit, match="REPOSITORY"):
        exec(compile(cell.source, "colab-cell", "exec"), {})
    source = cell.source.replace('REPOSITORY = ""', 'REPOSITORY = "https://example.org/alexnet.git"')
    exec(compile(source, "colab-cell", "exec"), {})
    assert calls and calls[0][:4] == [sys.executable, "-m", "pip", "install"]
    assert "alexnet[test] @ git+https://example.org/alexnet.git" in calls[0]


@functools.cache
def _library_numbers() -> list[str]:
    """Strings the tour must print, computed here from the library (the oracle for the tour's text)."""
    import alexnet

    paper = alexnet.summarize("alexnet")
    expected = [f"{paper.params:,}", f"{paper.macs:,}"]
    expected += [layer.formula for layer in paper.layers if layer.formula]  # (227 - 11 + 2*0)/4 + 1 = 55, ...
    expected += [f"{layer.params:>12,}{layer.macs:>14,}" for layer in paper.layers if layer.kind in ("conv", "fc")]
    expected += [f"{paper.share('params', 'conv'):.1%} of the parameters, {paper.share('macs', 'conv'):.1%}"]
    expected += [f"activations of one image, forward: {paper.activation_bytes / 1e6:.1f} MB"]
    ungrouped = alexnet.summarize("alexnet_ungrouped")
    expected += [f"one tower:  {ungrouped.params:,} parameters, {ungrouped.macs:,} multiply-adds"]
    for name in ("vgg16", "googlenet", "resnet50"):
        other = alexnet.summarize(name)
        expected += [f"{other.params:>14,}{other.macs:>17,}{other.activation_bytes / 1e6:>10.1f} MB"]
    return expected


def test_stored_outputs_print_the_library_numbers():
    """The stored text (what a reader sees on a code host) carries the library's figures."""
    text = "".join(_text(cell) for cell in _code_cells(_stored()))
    for expected in _library_numbers():
        assert expected in text, f"the stored tour does not print {expected!r}; {REGENERATE}"


@pytest.mark.notebook
def test_tour_runs_top_to_bottom():
    """Re-executed in a fresh kernel (one thread, as beside the other test process): no error, every
    figure drawn, the library's numbers printed, and every cell whose output does not depend on
    training prints exactly what is stored."""
    fresh = _runner().execute(threads=1)  # raises CellExecutionError, naming the cell, on any error
    stored = _code_cells(_stored())
    cells = _code_cells(fresh)
    assert len(cells) == len(stored)
    for number, (cell, kept) in enumerate(zip(cells, stored), start=1):
        where = f"code cell {number} ({cell.source.splitlines()[0][:50]!r})"
        assert not any(out.get("name") == "stderr" for out in cell.outputs), f"{where} warned: {_text(cell)}"
        if _draws_figure(cell):
            assert _figures(cell) >= 1, f"{where}: no figure"
        if "varies" not in cell.metadata.get("tags", []):  # training results may differ in the last digit
            assert _text(cell) == _text(kept), f"{where} now prints something else than is stored; {REGENERATE}"
    text = "".join(_text(cell) for cell in cells)
    for expected in _library_numbers():
        assert expected in text, f"the tour no longer prints {expected!r}"
    for claim in (
        r"the module equals the formula:\s+True",  # LRN by hand against the module
        r"torch.nn's \(alpha x 5\) equals it:\s+True",
        r"tower 1's maps 1-128 unchanged:\s+True",  # groups=2: conv2 sees its own tower only
        r"survivors in training are doubled: True",  # inverted dropout
    ):
        assert re.search(claim, text), f"the tour no longer shows {claim!r}"


def test_readme_first_screen_links_the_tour():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:25])
    assert "notebooks/tour.ipynb" in first_screen

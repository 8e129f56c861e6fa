"""The notebooks run end to end on small data, in a kernel of this virtual environment; outputs stay stripped."""

from __future__ import annotations

import pytest

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_for_conversion_and_training():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_convert_sources.ipynb",
        "02_train_with_torchdistributor.ipynb",
        "03_train_from_table.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"


@pytest.fixture(scope="module")
def notebook_data(tmp_path_factory):
    """One data folder for both notebooks: the training notebook reuses the converted digits."""
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_end_to_end(path, notebook_data, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PIPELINE_NB_DATA", str(notebook_data))
    monkeypatch.setenv("PIPELINE_NB_LIMIT", "400")
    monkeypatch.setenv("PIPELINE_NB_EPOCHS", "4")
    monkeypatch.setenv("PIPELINE_NB_ROWS", "4000")
    nb = nbformat.read(path, as_version=4)
    # The kernel is this interpreter (the venv's ipykernel); it starts its own local Spark.
    client = NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO)}}
    )
    client.execute()
    text = "\n".join(
        out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    if path.stem.startswith("03"):
        assert "second call converted: False same url: True" in text
        accuracy = float(text.split("training accuracy ")[1].split()[0])
        assert accuracy > 0.8, text[-3000:]
    elif path.stem.startswith("01"):
        assert "classes: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']" in text
        assert "torch.Size([4, 64])" in text
        assert "sensors_features" in text
    else:
        assert "held-out accuracy" in text
        accuracy = float(text.split("held-out accuracy ")[1].split()[0])
        assert accuracy > 0.5, text[-3000:]

"""The notebooks run top to bottom on a CPU, headless (nbclient, a real ipykernel)."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ANSWER, REPO


def outputs_text(cell) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(demo_dir):
    nb = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    text = "\n".join(outputs_text(c) for c in code)
    assert "Session('demo'" in text
    # the demo model on examples/demo-shapes.png: the red circle's box (IoU 0.99 with the truth)
    assert "<ref>the red circle</ref><box>[[134, 268, 377, 513]]</box>" in text
    assert "Ref(label='the red circle', boxes=[(134.0, 268.0, 377.0, 513.0)])" in text
    # The chat panel, the overlay and the app are widgets in the saved outputs.
    def shows_widget(cell):
        return any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.outputs)

    for needle in ("ChatPanel(session)", "ui.overlay(", "ui.show()", "%%wb_ask"):
        assert shows_widget(next(c for c in code if needle in c.source)), needle
    asked = next(c for c in code if c.source.startswith("%%wb_ask"))  # the magic answers with the box
    markdown = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in asked.outputs)
    assert "<ref>the green triangle</ref><box>" in markdown

"""``%load_ext workbench`` and its magics in a real kernel (nbclient + ipykernel)."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ANSWER, EXAMPLE, QUESTION, REPO
from test_notebooks import outputs_text


def widget_models(cell) -> list[str]:
    return [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for o in cell.outputs
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]


def html_of(cell) -> str:
    return "".join(str(o.get("data", {}).get("text/html", "")) + str(o.get("data", {}).get("text/markdown", ""))
                   for o in cell.outputs)


@pytest.mark.slow
def test_magics_chat_ask_jobs_and_compare(demo_dir, tmp_path):
    cells = [
        "%load_ext workbench",
        "%%wb_ask\nWhere is the red circle?",  # nothing loaded yet: a message
        "panel = %wb_chat demo\ntype(panel).__name__, panel._wanted.name",
        f"%%wb_ask\n<img>{EXAMPLE}</img>{QUESTION}",
        "%%wb_ask\nDescribe the image.",  # the same conversation goes on
        "import workbench.magics as M\nconv = next(iter(get_ipython().magics_manager.registry['WorkbenchMagics'].conversations.values()))\nlen(conv.turns)",
        "%wb_jobs no-such-job",
        "jobs = %wb_jobs\ntype(jobs).__name__",
        "cmp = %wb_compare\ntype(cmp).__name__",
        "%%wb_ask --bogus\nhello",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = nb.cells
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert "No model is loaded" in html_of(code[1]) and "wb-error" in html_of(code[1])
    assert "('ChatPanel', 'demo')" in outputs_text(code[2]) and widget_models(code[2])
    assert ANSWER in html_of(code[3]) and widget_models(code[3]), "the answer, and its boxes over the image"
    assert html_of(code[4]) and not widget_models(code[4])  # a description has no boxes
    assert outputs_text(code[5]).strip().endswith("2")
    assert "No job &#x27;no-such-job&#x27;" in html_of(code[6])
    assert "'JobsPanel'" in outputs_text(code[7]) and widget_models(code[7])
    assert "'ComparePanel'" in outputs_text(code[8]) and widget_models(code[8])
    assert "%%wb_ask takes only --new" in html_of(code[9])

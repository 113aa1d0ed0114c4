"""The jobs panel, through its traits and widgets, on a real finished background fine-tune (the
cancel / resume buttons are driven on a live job in test_jobs.py)."""

import subprocess
import sys

import pytest

from workbench.ui.jobs import JobsPanel, plot_history

pytestmark = pytest.mark.slow


def test_panel_shows_a_finished_job(finished):
    panel = JobsPanel(refresh_s=0)
    try:
        assert finished.id in [value for _, value in panel.jobs.options]
        panel.select(finished.id)
        assert panel.state == "finished"
        assert panel.progress.value == panel.progress.max == 4 and panel.progress.bar_style == "success"
        assert panel.eta.value.startswith("took ")
        assert finished.run_id in panel.summary.value and "last checkpoint: step 4" in panel.summary.value
        assert bytes(panel.plot.value).startswith(b"\x89PNG")
        assert panel.log_view.value and panel.log_view.value == finished.log_tail(60)  # the end of the real training log
        assert panel.cancel_button.disabled and panel.resume_button.disabled and not panel.merge_button.disabled
        panel.resume()  # a finished job cannot be resumed: said in the panel, nothing breaks
        assert "only a cancelled or failed job" in panel.error
    finally:
        panel.close()


def test_a_new_kernel_reattaches(finished):
    code = ("from workbench.ui.jobs import JobsPanel; p = JobsPanel(refresh_s=0); p.select(%r); "
            "print(p.state, p.progress.value, p.progress.max); p.close()" % finished.id)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["finished", "4", "4"], out.stderr


def test_plot_before_and_after_steps():
    empty = plot_history([])
    curve = plot_history([{"step": s, "loss": 3.0 / s, "lr": 1e-4 * s} for s in range(1, 20)])
    assert empty.startswith(b"\x89PNG") and curve.startswith(b"\x89PNG") and empty != curve

"""The Space's "Dataset and model" tab: its handlers on a tiny loop, its plot, and the page served and driven through
`gradio_client` (start, more privacy, accept, the downloads)."""

from __future__ import annotations

import zipfile

import pytest
from loop_components import make_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tab(tmp_path):
    from dpdiffusion.space.loop_tab import LoopTab

    return LoopTab(lambda: make_loop(tmp_path), tmp_path / "work")


def test_handlers_step_judge_and_accept(tab):
    from matplotlib.figure import Figure

    previews, fig, text = tab.start()
    assert len(previews) == 4 and isinstance(fig, Figure) and "epsilon = 1**" in text and "DP bound" in text
    previews, fig, text = tab.judge("more_privacy")
    assert "epsilon = 0.5**" in text and sorted(tab.loop.steps) == [0.5, 1.0]
    with pytest.raises(ValueError, match="verdict"):
        tab.judge("accept")
    final, files = tab.accept()
    assert "Accepted epsilon = 0.5" in final and [f.rsplit("/", 1)[1] for f in files] == ["release.zip", "model.zip"]
    with zipfile.ZipFile(files[0]) as z:
        assert "metadata.jsonl" in z.namelist()
    with zipfile.ZipFile(files[1]) as z:
        assert {"README.md", "config.json", "model.safetensors"} <= set(z.namelist())
    assert tab.accept()[1] == files  # a second press shows the same result, releases nothing more
    with pytest.raises(ValueError, match="accepted"):
        tab.judge("more_utility")


def test_plot_marks_the_current_step(tab):
    from dpdiffusion.space.loop_tab import plot_steps

    tab.start()
    tab.judge("more_utility")
    fig = plot_steps(tab.loop.steps, 2.0)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "epsilon"
    from matplotlib.collections import PathCollection

    ringed = [c for c in ax.collections if isinstance(c, PathCollection)]  # the scatter rings, not the error bars
    assert len(ringed) == 2 and {float(c.get_offsets()[0][0]) for c in ringed} == {2.0}


def test_the_page_is_driven_through_its_api(tmp_path):
    from gradio_client import Client

    from dpdiffusion.space.loop_tab import build_loop_demo

    demo = build_loop_demo(tmp_path / "work", make_loop=lambda: make_loop(tmp_path))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        _, _, text = client.predict(api_name="/loop_start")
        assert "epsilon = 1**" in text
        _, _, text = client.predict(api_name="/loop_more_privacy")
        assert "epsilon = 0.5**" in text
        final, files = client.predict(api_name="/loop_accept")
        assert "Accepted epsilon = 0.5" in final and len(files) == 2
    finally:
        demo.close()

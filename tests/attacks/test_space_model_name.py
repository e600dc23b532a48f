"""Attackers: a person using the Space, and a reader of its feedback dataset (threat model: channel "the model's
name").

The operator serves a pipeline from a folder on the server whose path says more than it should (here
``/…/clinic-ward7-intake/pipelines/faces-2026``). The person reads the page (Gradio's ``/config``, which holds every
text the page shows) and the answers of a release; the reader reads ``metadata.jsonl``. Neither may find the path,
nor any part of it: the model is named by its card's title (here "Ward faces pipeline"), a Hub repo id, or
"embedded default (SynthFaces)", and a folder without a card as "a local pipeline".

The test fails on commit ae36aae, where the page showed the model as the server's path, and every feedback record
stored it.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

pytest.importorskip("gradio")
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.filterwarnings("ignore:::gradio.queueing")]


import space_harness as H  # noqa: E402  (tests/space_harness.py)


@pytest.mark.parametrize("card", [True, False])
def test_the_page_and_the_feedback_never_name_the_model_by_its_path(tmp_path, monkeypatch, card):
    app = H.load_space_module()
    folder = tmp_path / "clinic-ward7-intake" / "pipelines" / "faces-2026"
    H.tiny_pipe(16).save_pretrained(folder, safe_serialization=True)
    if card:
        (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# Ward faces pipeline\n\nA card.\n")
    monkeypatch.setenv("DPDIFFUSION_SPACE_DEVICE", "cpu")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    pipe, name = app.load_pipeline(str(folder))  # as `main` loads $DPDIFFUSION_SPACE_MODEL or --model
    pipe.set_progress_bar_config(disable=True)
    with H.served(pipe, tmp_path / "space", budget_epsilon=3.0, model_name=name) as demo:
        page = urllib.request.urlopen(demo.local_url.rstrip("/") + "/config", timeout=20).read().decode()
        person = H.client(demo, tmp_path / "person")
        sample = person.predict(0, api_name="/sample")
        weights = [1.0] * len(pipe.attribute_directions.names)
        answer = person.predict(sample, ["dark_skin"], 1.0, *weights, api_name="/protect")
        person.predict(api_name="/more_privacy")
        person.predict(api_name="/accept")
    records = H.feedback_records(tmp_path / "space")
    assert len(records) == 2
    seen = {"the page": page, "the answer": json.dumps(H.texts(answer)),
            "the feedback": json.dumps(records, ensure_ascii=False)}
    for what, text in seen.items():
        for part in (str(folder), "clinic-ward7-intake", "faces-2026"):
            assert part not in text, f"{what} names the model's path ({part})"
    expected = "Ward faces pipeline" if card else "a local pipeline"
    assert {r["model"] for r in records} == {expected} and expected in page
    # a path given as the name directly is not shown either
    direct = app.build_demo(pipe, ledger_dir=tmp_path / "s2" / "ledger", feedback_dir=tmp_path / "s2" / "feedback",
                            model_name=str(folder), num_inference_steps=1)
    assert direct.dp_space.model_name == expected
    print(f"\nthe model is shown and stored as {expected!r}")

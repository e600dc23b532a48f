"""The Space's page around a release (issue 33, part 5, and the banner of part 1): what the page offers before and
after a release and after "accept", the weights of the ticked attributes only, the Protect button above them, the
banner while the model knows only synthetic faces, and readable API names.

Pure handlers (`page_controls`, `shown_weights`, `domain_banner`, `synthetic_domain`) on the 16 px dummy pipeline,
and the built page's config; the page in a browser: tests/spaces/test_browser.py.
"""

from __future__ import annotations

import html

import pytest

gr = pytest.importorskip("gradio")

ATTRS = ["dark_skin", "long_hair"]


from space_harness import load_space_module  # noqa: E402  (tests/space_harness.py)

app = load_space_module()
from dpdiffusion.space import layout  # noqa: E402
from dpdiffusion.space.config import synthetic_domain  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def face(seed: int = 0, size: int = 64):
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays

    return make_synthfaces_arrays(1, image_size=size, seed=seed)[0][0]


def pipe_of(components, domain=None):
    from dpdiffusion import DPDiffusionPipeline

    pipe = DPDiffusionPipeline(**components, training_domain=domain)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_space(pipe, tmp_path, *, model_name="dummy"):
    from dpdiffusion.privacy.ledger import PrivacyLedger

    config = app.SpaceConfig(budget_epsilon=3.0, num_inference_steps=2)
    tmp_path.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=config.budget_epsilon, delta=config.delta)
    return app.DPSpace(pipe, ledger=ledger, feedback=app.FeedbackLog(tmp_path / "feedback"), config=config,
                       model_name=model_name)


def component(config: dict, elem_id: str) -> dict:
    return next(c for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


# ------------------------------------------------------------------------------------------------ pure handlers
def test_the_page_offers_figures_and_judgements_only_after_a_release(dummy_pipe, tmp_path):
    space = make_space(dummy_pipe, tmp_path)
    nothing = {"figures": False, "judge": False}
    assert layout.page_controls(None) == nothing
    assert layout.page_controls(app.SubjectSession()) == nothing  # a fresh page: no face, no release
    refused = space.protect(face(), [], None, 1.0, None)  # a request refused before any release
    assert refused.level == "refused" and layout.page_controls(refused.session) == nothing
    shown = space.protect(face(), ATTRS, None, 1.0, None)
    assert layout.page_controls(shown.session) == {"figures": True, "judge": True}
    done = space.feedback("accept", shown.session)
    assert layout.page_controls(done.session) == {"figures": True, "judge": False}  # the accepted image stays


def test_after_accept_the_figures_offer_no_next_release(dummy_pipe, tmp_path):
    space = make_space(dummy_pipe, tmp_path)
    shown = space.feedback("more_privacy", space.protect(face(), ATTRS, None, 1.0, None).session)
    assert "| next release | more privacy → ε=0.25" in shown.figures
    done = space.feedback("accept", shown.session)
    assert "next release" not in done.figures and "more privacy →" not in done.figures
    assert "ε of this image" in done.figures and "Final report" in done.report  # the rest of the table stays


def test_weights_are_shown_for_the_ticked_attributes_only():
    names = ("dark_skin", "long_hair", "smiling")
    assert layout.shown_weights(names, ["smiling", "dark_skin"]) == [True, False, True]
    assert layout.shown_weights(names, []) == [False, False, False]
    assert layout.shown_weights(names, None) == [False, False, False]


def test_the_banner_while_the_model_knows_only_synthetic_faces(dummy_components, tmp_path):
    from dpdiffusion.models.training_domain import (REAL_FACE_CHECKPOINT, REAL_FACE_COMMANDS,
                                                    official_diffae_domain, synthfaces_domain)

    space = make_space(pipe_of(dummy_components, synthfaces_domain(16)), tmp_path / "a",
                       model_name="Ward <faces> pipeline")
    assert synthetic_domain(space.pipe).name == "SynthFaces"
    banner = layout.domain_banner(space)
    text = html.unescape(banner)
    assert "only synthetic faces" in text and "SynthFaces, 16 px, synthetic" in text and "cartoon" in text
    assert REAL_FACE_COMMANDS[0] in text and f"dpdiffusion space --model {REAL_FACE_CHECKPOINT}" in text
    assert "scripts/convert_diffae_checkpoint.py" in text
    assert "Ward &lt;faces&gt; pipeline" in banner and "<faces>" not in banner  # the name is text, not markup
    # a real-face model, and a model that does not declare its domain: no banner
    for domain in (official_diffae_domain("ffhq", 16), None):
        other = make_space(pipe_of(dummy_components, domain), tmp_path / str(domain is None))
        assert synthetic_domain(other.pipe) is None and layout.domain_banner(other) is None


def test_the_embedded_default_gets_the_banner():
    from dpdiffusion.models.default import default_model_available

    if not default_model_available():
        pytest.skip("the embedded default model is not installed")
    pipe, name = app.load_pipeline()
    domain = synthetic_domain(pipe)
    assert name == "embedded default (SynthFaces)"
    assert domain is not None and (domain.name, domain.resolution) == ("SynthFaces", pipe.image_size)


# ------------------------------------------------------------------------------------------------ the built page
def test_the_page_before_any_release(dummy_components, tmp_path):
    from dpdiffusion.models.training_domain import synthfaces_domain

    pipe = pipe_of(dummy_components, synthfaces_domain(16))
    demo = app.build_demo(pipe, ledger_dir=tmp_path / "l", feedback_dir=tmp_path / "f", budget_epsilon=3.0,
                          num_inference_steps=2, model_name="a local pipeline")
    config = demo.get_config_file()
    banner = component(config, "dp-domain-banner")["props"]["value"]
    assert "only synthetic faces" in banner and "dpdiffusion space --model" in banner
    # no figure before a release: a dash, the Numbers hidden (they would read 0)
    assert component(config, "dp-no-figures")["props"]["value"].count("–") == 2
    assert component(config, "dp-figure-boxes")["props"]["visible"] is False
    for elem_id in ("dp-more-privacy", "dp-more-detail", "dp-accept"):
        assert component(config, elem_id)["props"]["interactive"] is False, elem_id
    assert component(config, "dp-protect")["props"].get("interactive") is not False
    # the weights of the ticked attributes only; the Protect button above them
    ticked = set(demo.dp_space.default_attributes)
    for name in demo.dp_space.attribute_names:
        assert component(config, f"dp-weight-{name}")["props"]["visible"] is (name in ticked), name
    order = [c["props"].get("elem_id") for c in config["components"]]
    weights = [order.index(f"dp-weight-{n}") for n in demo.dp_space.attribute_names]
    assert order.index("dp-attributes") < order.index("dp-start-epsilon") < order.index("dp-protect") < min(weights)


def test_the_api_names_are_readable_and_the_page_state_is_not_an_endpoint(dummy_pipe, tmp_path):
    demo = app.build_demo(dummy_pipe, ledger_dir=tmp_path / "l", feedback_dir=tmp_path / "f", budget_epsilon=3.0,
                          num_inference_steps=2)
    assert "dp-domain-banner" not in {c["props"].get("elem_id") for c in demo.get_config_file()["components"]}
    api = demo.get_api_info()["named_endpoints"]
    assert set(api) == {"/protect", "/more_privacy", "/more_detail", "/accept", "/sample", "/protect_photo"}
    names = {endpoint: ([p["parameter_name"] for p in info["parameters"]], [r["label"] for r in info["returns"]])
             for endpoint, info in api.items()}
    weights = [f"weight_{a}" for a in dummy_pipe.attribute_directions.names]
    release = ["Protected", "ε of this image", "ε spent by this session", "figures", "status", "report"]
    assert names["/protect"] == (["image", "attributes", "start_epsilon", *weights], release)
    for endpoint in ("/more_privacy", "/more_detail", "/accept"):
        assert names[endpoint] == ([], release)
    assert names["/sample"] == (["index"], ["image"])
    assert names["/protect_photo"] == (["photo", "attributes", "epsilon"], ["protected_photo", "status"])
    assert not any(n.startswith(("param_", "parameter_", "value_")) for p, r in names.values() for n in p + r)

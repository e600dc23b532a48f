"""The Space (spaces/): the epsilon controller, the pure handlers, one budget per face on every path (sessions,
accepts, re-encodings, concurrent sessions, restarts), the feedback dataset, and one smoke test of the served app
through `gradio_client`. The face hash and its secret: tests/spaces/test_subjects.py.

Everything runs on the 16 px dummy pipeline of tests/conftest.py with 2 DDIM steps, with a real `PrivacyLedger`.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

gr = pytest.importorskip("gradio")

SPACES = Path(__file__).resolve().parents[2] / "spaces"


def load_space_module():
    """``spaces/app.py`` as the module ``dpdiffusion_space_app`` (``spaces/`` is not a package)."""
    name = "dpdiffusion_space_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SPACES / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[name]


app = load_space_module()
from dpdiffusion.space import images as space_images  # noqa: E402  (the app ships in the package)
from dpdiffusion.space.controller import VERDICTS, EpsilonController  # noqa: E402

ATTRS = ["dark_skin", "long_hair"]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Two OpenMP threads on a machine whose other core is busy spin against each other (25 tiny DDIM steps took
    # 0.4 s with one thread and 12 s with two here); these tests use one and restore the setting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def face(seed: int = 0, size: int = 64) -> np.ndarray:
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays

    return make_synthfaces_arrays(1, image_size=size, seed=seed)[0][0]


def make_space(pipe, tmp_path, *, budget_epsilon=3.0, **kwargs):
    from dpdiffusion.privacy.ledger import PrivacyLedger

    config = app.SpaceConfig(budget_epsilon=budget_epsilon, num_inference_steps=2, **kwargs)
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=config.budget_epsilon, delta=config.delta)
    feedback = app.FeedbackLog(tmp_path / "feedback")
    return app.DPSpace(pipe, ledger=ledger, feedback=feedback, config=config, model_name="dummy")


# ------------------------------------------------------------------------------------------------ controller
class TestEpsilonController:
    def test_multiplicative_steps_until_bracketed(self):
        c = EpsilonController(epsilon=1.0, step_factor=2.0)
        assert c.propose("more_privacy").epsilon == 0.5
        assert c.propose("more_detail").epsilon == 2.0
        down = c.propose("more_privacy").propose("more_privacy")
        assert (down.epsilon, down.upper, down.lower) == (0.25, 0.5, None)

    def test_bisection_in_log_epsilon_once_bracketed(self):
        c = EpsilonController(epsilon=1.0, significant_digits=12)
        c = c.propose("more_privacy").propose("more_detail")  # upper 1, lower 0.5
        assert (c.lower, c.upper) == (0.5, 1.0)
        assert c.epsilon == pytest.approx(math.sqrt(0.5), rel=1e-11)
        c2 = c.propose("more_privacy")  # upper moves down to sqrt(0.5)
        assert c2.epsilon == pytest.approx(math.sqrt(0.5 * math.sqrt(0.5)), rel=1e-11)
        assert c2.lower < c2.epsilon < c2.upper

    def test_converges_into_the_bracket(self):
        c = EpsilonController(epsilon=1.0)
        target = 0.3  # a person who wants epsilon near 0.3
        for _ in range(30):
            nxt = c.propose("more_privacy" if c.epsilon > target else "more_detail")
            if not c.moved(nxt):
                break
            c = nxt
        assert c.epsilon == pytest.approx(target, rel=0.01)

    def test_contradicting_judgement_drops_the_old_bracket(self):
        # "more privacy" below the known too-noisy epsilon: people change their minds; the old lower bound goes
        c = EpsilonController(epsilon=0.4, lower=0.5, upper=2.0).propose("more_privacy")
        assert (c.lower, c.upper, c.epsilon) == (None, 0.4, 0.2)
        c = EpsilonController(epsilon=3.0, lower=0.5, upper=2.0).propose("more_detail")
        assert (c.lower, c.upper, c.epsilon) == (3.0, None, 6.0)
        # consistent judgements keep both sides
        c = EpsilonController(epsilon=1.0, lower=0.5, upper=2.0).propose("more_privacy")
        assert (c.lower, c.upper) == (0.5, 1.0)

    def test_accept_keeps_epsilon_and_records_history(self):
        c = EpsilonController(epsilon=1.0).propose("more_privacy").propose("accept")
        assert c.epsilon == 0.5
        assert c.history == ((1.0, "more_privacy"), (0.5, "accept"))

    def test_clamped_at_the_range_and_reports_no_move(self):
        c = EpsilonController(epsilon=0.01, min_epsilon=0.01)
        nxt = c.propose("more_privacy")
        assert nxt.epsilon == 0.01 and not c.moved(nxt)
        top = EpsilonController(epsilon=80.0, max_epsilon=100.0).propose("more_detail")
        assert top.epsilon == 100.0

    def test_immutable_and_pure(self):
        c = EpsilonController(epsilon=1.0)
        c.propose("more_privacy")
        assert c.epsilon == 1.0 and c.history == ()

    @pytest.mark.parametrize("kwargs", [dict(epsilon=0.0), dict(epsilon=float("inf")), dict(epsilon=True),
                                        dict(epsilon=1.0, step_factor=1.0), dict(epsilon=1.0, lower=2.0, upper=1.0),
                                        dict(epsilon=1.0, min_epsilon=2.0, max_epsilon=1.0),
                                        dict(epsilon=1.0, significant_digits=0)])
    def test_bad_arguments_raise(self, kwargs):
        with pytest.raises(ValueError):
            EpsilonController(**kwargs)

    def test_unknown_verdict_raises(self):
        with pytest.raises(ValueError, match="verdict must be one of"):
            EpsilonController(epsilon=1.0).propose("less_privacy")
        assert set(VERDICTS) == {"more_privacy", "more_detail", "accept"}


# ------------------------------------------------------------------------------------------------ images
class TestDecodeOriginal:
    def test_data_url_round_trip_and_browser_size(self):
        img = face(size=300)
        arr = app.decode_original(app.image_to_data_url(img))
        assert arr.dtype == np.uint8 and arr.shape == (app.FACE_SIDE, app.FACE_SIDE, 3)
        small = face(size=40)
        np.testing.assert_array_equal(app.decode_original(app.image_to_data_url(small)), small)

    def test_arrays_and_pil_accepted(self):
        img = face(size=32)
        np.testing.assert_array_equal(app.decode_original(img), img)
        np.testing.assert_array_equal(app.decode_original(PIL.Image.fromarray(img).convert("RGBA")), img)

    @pytest.mark.parametrize("value,match", [(None, "nothing loaded"), ("", "nothing loaded"),
                                             ("hello", "data:image"), ("data:image/png;base64,@@@@", "base64"),
                                             ("data:image/png;base64," + base64.b64encode(b"not an image").decode(),
                                              "not an image"),
                                             ("TRUNCATED", "truncated or corrupt")])
    def test_bad_values_refused(self, value, match):
        if value == "TRUNCATED":  # a valid PNG header, half of the data
            raw = base64.b64decode(app.image_to_data_url(face()).split(",", 1)[1])
            value = "data:image/png;base64," + base64.b64encode(raw[: len(raw) // 2]).decode()
        with pytest.raises(ValueError, match=match):
            app.decode_original(value)

    def test_limits(self, monkeypatch):
        tiny = app.image_to_data_url(np.zeros((4, 20, 3), np.uint8))
        with pytest.raises(ValueError, match="at least"):
            app.decode_original(tiny)
        huge = PIL.Image.new("1", (4100, 4100))  # 16.8 MP, a few kB as PNG: the pixel limit, checked before decoding
        buf = io.BytesIO()
        huge.save(buf, format="PNG")
        with pytest.raises(ValueError, match="megapixels"):
            app.decode_original("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
        monkeypatch.setattr(space_images, "MAX_UPLOAD_BYTES", 1000)
        with pytest.raises(ValueError, match="larger than the limit"):
            app.decode_original(app.image_to_data_url(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                                      dtype=np.uint8)))

    def test_error_messages_never_contain_the_image(self):
        url = app.image_to_data_url(np.zeros((4, 20, 3), np.uint8))
        with pytest.raises(ValueError) as err:
            app.decode_original(url)
        assert url[30:60] not in str(err.value)

    def test_display_upscale_is_exact_nearest(self):
        img = face(size=16)
        big = app.upscale_for_display(img)
        assert big.shape == (256, 256, 3)
        np.testing.assert_array_equal(big[::16, ::16], img)


# ------------------------------------------------------------------------------------------------ handlers
class TestHandlers:
    def test_sample_is_a_synthfaces_data_url(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path)
        url = space.sample(3)
        assert url.startswith("data:image/png;base64,")
        assert app.decode_original(url).shape == (128, 128, 3)
        with pytest.raises(ValueError, match="sample index"):
            space.sample(space.config.num_samples)

    def test_protect_charges_one_release_before_showing_it(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path)
        view = space.protect(app.image_to_data_url(face()), ATTRS, {"dark_skin": 2.0, "long_hair": 1.0}, 1.0, None)
        assert view.level == "info", view.status
        s = view.session
        history = space.ledger.history(s.subject_id)
        assert len(history) == 1 and history[0].attributes == tuple(ATTRS)
        assert view.epsilon == pytest.approx(1.0)
        assert view.session_spent == pytest.approx(1.0, rel=1e-3)  # this session's one release at epsilon 1
        assert view.session_spent == pytest.approx(space.ledger.spent(s.subject_id), rel=1e-3)  # (the only one)
        assert s.protected.shape == (16, 16, 3) and view.protected.shape == (256, 256, 3)
        assert s.weights == (2.0, 1.0) and s.report["weights"] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
        for text in ("ε of this image", "δ", "guarantee", "formal", "ε spent by this session", "noise std",
                     "next release"):
            assert text in view.figures
        assert space.feedback_log.records() == []  # nothing judged yet

    def test_more_privacy_lowers_epsilon_charges_and_records_the_judgement(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path)
        first = space.protect(face(), ATTRS, None, 1.0, None)
        second = space.feedback("more_privacy", first.session)
        third = space.feedback("more_privacy", second.session)
        assert [first.epsilon, second.epsilon, third.epsilon] == [1.0, 0.5, 0.25]
        assert first.session_spent < second.session_spent < third.session_spent  # this session's, composed
        sid = first.session.subject_id
        assert third.session.subject_id == sid and len(space.ledger.history(sid)) == 3
        # this session's spend is composed as the ledger composes (here the session is the face's only one)
        assert third.session.spent_epsilon == pytest.approx(space.ledger.spent(sid), rel=1e-12)
        records = space.feedback_log.records()
        assert [(r["verdict"], r["epsilon"]) for r in records] == [("more_privacy", 1.0), ("more_privacy", 0.5)]
        assert records[0]["session_id"] == first.session.session_id != sid  # never the ledger's subject id
        assert records[0]["attributes"] == ATTRS
        assert records[0]["weights"] == [1.0, 1.0] and records[0]["budget_epsilon"] == 3.0
        assert records[0]["session_spent_epsilon"] == pytest.approx(1.0, rel=1e-6)
        assert "spent_epsilon" not in records[0]  # never the face's total over sessions
        # the stored image is the protected image that was judged, at the model's resolution
        stored = np.asarray(PIL.Image.open(tmp_path / "feedback" / records[0]["file_name"]))
        np.testing.assert_array_equal(stored, first.session.protected)

    def test_refused_release_changes_nothing(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path, budget_epsilon=3.0)
        shown = space.protect(face(), ATTRS, None, 2.0, None)  # spends 2 of 3
        sid = shown.session.subject_id
        before = (space.ledger.history(sid), space.ledger.spent(sid), space.feedback_log.records())
        refused = space.feedback("more_detail", shown.session)  # epsilon 4 alone exceeds the budget
        assert refused.level == "refused"
        assert "whole budget" in refused.status and "nothing was generated or charged" in refused.status
        assert (space.ledger.history(sid), space.ledger.spent(sid), space.feedback_log.records()) == before
        assert refused.session is shown.session and refused.protected is None and refused.epsilon is None
        # the session goes on: a cheaper release still fits
        assert space.feedback("more_privacy", refused.session).level == "info"

    def test_accept_ends_the_session_with_a_final_report(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path)
        img = face()
        view = space.feedback("more_privacy", space.protect(img, ATTRS, None, 1.0, None).session)
        spent = space.ledger.spent(view.session.subject_id)
        done = space.feedback("accept", view.session)
        assert done.session.finished and "Final report" in done.report
        assert "2" in done.report and f"{spent:.4g}" in done.report
        assert space.ledger.spent(view.session.subject_id) == spent  # accept charges nothing
        assert [r["verdict"] for r in space.feedback_log.records()] == ["more_privacy", "accept"]
        assert space.feedback("more_privacy", done.session).level == "refused"  # the session has ended
        # "accept" ends the session, not the budget: the same face starts a new session on the same subject
        again = space.protect(img, ATTRS, None, 1.0, done.session)
        assert again.level == "info" and again.session.subject_id == done.session.subject_id
        assert again.session.session_id != done.session.session_id and again.session.releases == 1
        assert space.ledger.spent(again.session.subject_id) > spent and len(space.ledger.subjects()) == 1
        other = space.protect(face(seed=5), ATTRS, None, 1.0, again.session)  # another face: a new subject
        assert other.level == "info" and other.session.subject_id != done.session.subject_id

    def test_same_face_keeps_its_subject_and_the_relation_is_enforced(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path)
        img = face()
        first = space.protect(img, ATTRS, None, 1.0, None)
        again = space.protect(img, ATTRS + ["smiling"], None, 1.0, first.session)  # superset: allowed
        assert again.level == "info" and again.session.subject_id == first.session.subject_id
        narrower = space.protect(img, ["smiling"], None, 1.0, again.session)  # not a superset: refused
        assert narrower.level == "refused" and "at least the attributes its first release protected" in narrower.status
        assert "dark_skin" not in narrower.status  # what the face's first release protected is not said
        assert len(space.ledger.history(first.session.subject_id)) == 2

    @pytest.mark.parametrize("image,attributes,weights,eps,match", [
        (None, ATTRS, None, 1.0, "nothing loaded"),
        ("x", ATTRS, None, 1.0, "data:image"),
        ("FACE", [], None, 1.0, "at least one attribute"),
        ("FACE", ["age"], None, 1.0, "unknown attributes"),
        ("FACE", ATTRS, {"dark_skin": 0.0}, 1.0, "weight of dark_skin"),
        ("FACE", ATTRS, None, -1.0, "epsilon"),
        ("FACE", ATTRS, None, float("nan"), "epsilon"),
    ])
    def test_bad_inputs_are_refused_without_charging(self, dummy_pipe, tmp_path, image, attributes, weights, eps,
                                                     match):
        space = make_space(dummy_pipe, tmp_path)
        view = space.protect(face() if image == "FACE" else image, attributes, weights, eps, None)
        assert view.level == "refused" and match in view.status
        assert space.ledger.subjects() == []

    def test_feedback_before_protect_is_refused(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path)
        assert space.feedback("more_privacy", None).level == "refused"
        with pytest.raises(ValueError, match="verdict"):
            space.feedback("maybe", None)

    def test_feedback_dataset_loads_with_datasets_and_never_holds_the_original(self, dummy_pipe, tmp_path):
        datasets = pytest.importorskip("datasets")
        space = make_space(dummy_pipe, tmp_path)
        img = face()
        v = space.protect(img, ATTRS, {"dark_skin": 3.0, "long_hair": 1.0}, 1.0, None)
        v = space.feedback("more_privacy", v.session)
        v = space.feedback("more_detail", v.session)
        space.feedback("accept", v.session)
        ds = app.load_feedback_dataset(tmp_path / "feedback")
        assert isinstance(ds, datasets.Dataset) and ds.num_rows == 3
        assert ds["verdict"] == ["more_privacy", "more_detail", "accept"]
        assert ds["epsilon"] == pytest.approx([1.0, 0.5, 0.7071])
        assert ds["weights"][0] == [3.0, 1.0] and ds["attributes"][0] == ATTRS
        assert ds[0]["image"].size == (16, 16)
        text = (tmp_path / "feedback" / "metadata.jsonl").read_text()
        assert "data:image" not in text and "original" not in json.loads(text.splitlines()[0])
        files = sorted(p.name for p in (tmp_path / "feedback").rglob("*") if p.is_file())
        assert len(files) == 4  # metadata.jsonl and the three protected images, nothing else
        for p in (tmp_path / "feedback" / "images").iterdir():
            assert np.asarray(PIL.Image.open(p)).shape == (16, 16, 3)  # protected, at the model's resolution

    def test_commit_scheduler_only_with_repo_and_token(self, tmp_path, monkeypatch):
        import huggingface_hub

        made = []

        class FakeScheduler:
            def __init__(self, **kwargs):
                made.append(kwargs)
                self.lock = threading.Lock()

        monkeypatch.setattr(huggingface_hub, "CommitScheduler", FakeScheduler)
        assert app.FeedbackLog(tmp_path / "a").scheduler is None
        assert app.FeedbackLog(tmp_path / "b", repo_id="me/feedback", token=None).scheduler is None
        log = app.FeedbackLog(tmp_path / "c", repo_id="me/feedback", token="hf_x")
        assert isinstance(log.scheduler, FakeScheduler) and log._lock is log.scheduler.lock
        assert made == [dict(repo_id="me/feedback", repo_type="dataset", folder_path=tmp_path / "c", every=5.0,
                             token="hf_x", private=True, allow_patterns=["metadata.jsonl", "images/*.png"])]
        log.append({"verdict": "accept"}, np.zeros((4, 4, 3), np.uint8))
        assert log.records()[0]["verdict"] == "accept"

    def test_build_demo_has_the_page_and_the_privacy_statement(self, dummy_pipe, tmp_path):
        demo = app.build_demo(dummy_pipe, ledger_dir=tmp_path / "l", feedback_dir=tmp_path / "f",
                              budget_epsilon=3.0, num_inference_steps=2)
        assert isinstance(demo, gr.Blocks)
        config = demo.get_config_file()
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"dp-original", "dp-protected", "dp-epsilon", "dp-session-spent", "dp-more-privacy", "dp-more-detail",
                "dp-accept", "dp-protect", "dp-status", "dp-photo-in", "dp-photo-out"} <= ids
        note = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "dp-privacy-note")
        assert "never written to a file or to logs" in note["props"]["value"]
        assert "keeps no copy of the request" in note["props"]["value"] and "60 to 65 minutes" in note["props"]["value"]
        assert "8 MB" in note["props"]["value"] and "16.8 megapixels" in note["props"]["value"]
        api = {d.get("api_name") for d in config["dependencies"]}
        assert {"protect", "more_privacy", "more_detail", "accept", "sample", "protect_photo"} <= api
        # no component takes a file upload (Gradio writes uploads to its cache and serves them): both modes read the
        # picture in the browser through the same HTML component
        uploads = [c for c in config["components"] if c.get("type") in ("image", "file", "annotatedimage", "gallery",
                                                                        "uploadbutton")
                   and c.get("props", {}).get("interactive") is not False]
        assert uploads == [], [c.get("props", {}).get("elem_id") for c in uploads]
        html = {c["props"]["elem_id"]: c["props"] for c in config["components"]
                if c.get("type") == "html" and c["props"].get("elem_id") in ("dp-original", "dp-photo-in")}
        assert html["dp-original"]["js_on_load"] == html["dp-photo-in"]["js_on_load"]  # one script, two uses
        # readable API parameter names (no param_4 ...)
        params = [p["parameter_name"] for p in demo.get_api_info()["named_endpoints"]["/protect"]["parameters"]]
        assert params[:3] == ["image", "attributes", "start_epsilon"] and params[3].startswith("weight_"), params


# ------------------------------------------------------------------------------------------------ one budget per face
def encoded(image: np.ndarray, fmt: str = "PNG", scale: float = 1.0, quality: int = 90) -> str:
    """``image`` as the page would send it after the person re-saved it: another format and/or size."""
    pil = PIL.Image.fromarray(image)
    if scale != 1.0:
        pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), PIL.Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {"compress_level": 1}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _paths_to_face_a(space, a: np.ndarray, b: np.ndarray, first):
    """Every way the review found to reach face A again, each a fresh attempt at epsilon 1 (name, view)."""
    yield "A, B, A in one session", space.protect(encoded(a), ATTRS, None, 1.0,
                                                  space.protect(encoded(b), ATTRS, None, 1.0, first.session).session)
    yield "A in a second session", space.protect(encoded(a), ATTRS, None, 1.0, None)
    done = space.feedback("accept", first.session) if first.session.protected is not None else first
    yield "A after accept", space.protect(encoded(a), ATTRS, None, 1.0, done.session)
    yield "A as JPEG q90", space.protect(encoded(a, "JPEG"), ATTRS, None, 1.0, None)
    yield "A at 2x", space.protect(encoded(a, scale=2.0), ATTRS, None, 1.0, None)
    yield "A at 0.75x, JPEG", space.protect(encoded(a, "JPEG", scale=0.75), ATTRS, None, 1.0, None)


class TestOneBudgetPerFace:
    """The review's bypass: a new subject per face change, session, accept or re-encoding gave A a fresh budget."""

    def test_every_path_to_a_face_charges_its_one_subject(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path, budget_epsilon=50.0)
        a, b = face(seed=0, size=128), face(seed=1, size=128)
        first = space.protect(encoded(a), ATTRS, None, 1.0, None)
        sid_a = first.session.subject_id
        for name, view in _paths_to_face_a(space, a, b, first):
            assert view.level == "info", (name, view.status)
            assert view.session.subject_id == sid_a, name
        sid_b = next(s for s in space.ledger.subjects() if s != sid_a)
        assert set(space.ledger.subjects()) == {sid_a, sid_b}
        history = space.ledger.history(sid_a)
        assert len(history) == 7 and len(space.ledger.history(sid_b)) == 1
        one = PrivacyLedgerFor(tmp_path, history[0].noise_multiplier, times=7)
        assert space.ledger.spent(sid_a) == pytest.approx(one, rel=1e-12)  # all seven composed on A's budget
        assert re.fullmatch(r"[0-9a-f]{64}", sid_a)  # opaque: a hex HMAC-SHA256

    def test_a_spent_budget_is_refused_on_every_path(self, dummy_pipe, tmp_path):
        space = make_space(dummy_pipe, tmp_path, budget_epsilon=1.5)  # two releases at epsilon 1 compose to 1.47
        a, b = face(seed=0, size=128), face(seed=1, size=128)
        first = space.protect(encoded(a), ATTRS, None, 1.0, None)
        sid_a = first.session.subject_id
        views = dict(_paths_to_face_a(space, a, b, first))
        assert views["A, B, A in one session"].level == "info"  # the second release of A still fits
        for name, view in list(views.items())[1:]:
            assert view.level == "refused", name
            assert "does not fit what is left of this face's privacy budget" in view.status, name
            assert "nothing was charged" in view.status, name
        assert len(space.ledger.history(sid_a)) == 2
        assert space.ledger.spent(sid_a) == pytest.approx(1.4652, abs=1e-4)
        # and once more, every path refused now that A is spent, whatever session it comes from
        fresh = space.protect(encoded(b), ATTRS, None, 0.5, None)
        for name, view in _paths_to_face_a(space, a, b, fresh):
            if name != "A, B, A in one session":
                assert view.level == "refused", name
        assert len(space.ledger.history(sid_a)) == 2 and len(space.ledger.subjects()) == 2

    @pytest.mark.parametrize("variants", [("PNG", "PNG"), ("PNG", "JPEG")])
    def test_concurrent_sessions_on_one_face_cannot_overspend(self, dummy_pipe, tmp_path, variants):
        space = make_space(dummy_pipe, tmp_path, budget_epsilon=2.0)  # fits three releases at epsilon 1
        a = face(seed=3, size=128)
        urls = [encoded(a, fmt) for fmt in variants]
        barrier, views, errors = threading.Barrier(2), [], []

        def user(url):
            try:
                barrier.wait()
                for _ in range(3):
                    views.append(space.protect(url, ATTRS, None, 1.0, None))  # a fresh session each time
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=user, args=(u,)) for u in urls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        (sid,) = space.ledger.subjects()  # both users, both encodings: one subject
        shown = [v for v in views if v.level == "info"]
        assert len(shown) == len(space.ledger.history(sid)) == 3 and len(views) == 6
        assert space.ledger.spent(sid) <= 2.0

    def test_two_processes_on_one_face_cannot_overspend(self, dummy_pipe, tmp_path):
        """Two Space processes (forked, each with its own `DPSpace` and ledger connection on the same folder)."""
        import multiprocessing

        if "fork" not in multiprocessing.get_all_start_methods():
            pytest.skip("needs the fork start method")
        ctx = multiprocessing.get_context("fork")
        url = encoded(face(seed=4, size=128))
        make_space(dummy_pipe, tmp_path, budget_epsilon=2.0)  # creates the ledger and the secret
        start = ctx.Event()

        def user():
            space = make_space(dummy_pipe, tmp_path, budget_epsilon=2.0)
            start.wait(30)
            shown = sum(space.protect(url, ATTRS, None, 1.0, None).level == "info" for _ in range(3))
            raise SystemExit(10 + shown)

        procs = [ctx.Process(target=user) for _ in range(2)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(60)
        from dpdiffusion.privacy.ledger import PrivacyLedger

        ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
        (sid,) = ledger.subjects()
        assert sum(p.exitcode - 10 for p in procs) == len(ledger.history(sid)) == 3
        assert ledger.spent(sid) <= 2.0

    def test_noise_not_from_the_csprng_is_never_shown(self, dummy_components, tmp_path):
        from dpdiffusion import DPDiffusionPipeline

        calls = []

        class SeededPipe(DPDiffusionPipeline):  # a pipeline that reports reproducible noise
            def __call__(self, *args, **kwargs):
                calls.append(kwargs["secure_mode"])
                out = super().__call__(*args, **kwargs)
                out.noise_source = "seeded"
                return out

        pipe = SeededPipe(**dummy_components)
        pipe.set_progress_bar_config(disable=True)
        space = make_space(pipe, tmp_path)
        view = space.protect(face(), ATTRS, None, 1.0, None)
        assert calls == [True]  # the Space always asks for CSPRNG noise
        assert view.level == "refused" and "noise_source='seeded'" in view.status
        assert view.protected is None and view.session.protected is None

    def test_secure_mode_cannot_be_switched_off(self, dummy_pipe, tmp_path):
        with pytest.raises(ValueError, match="secure_mode must be True"):
            app.SpaceConfig(secure_mode=False)
        with pytest.raises(ValueError, match="secure_mode must be True"):
            app.build_demo(dummy_pipe, ledger_dir=tmp_path / "l", feedback_dir=tmp_path / "f", secure_mode=False)


def PrivacyLedgerFor(tmp_path, noise_multiplier: float, *, times: int) -> float:
    """What a fresh ledger says ``times`` releases at ``noise_multiplier`` compose to (the oracle of one subject)."""
    from dpdiffusion.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "oracle.sqlite", budget_epsilon=1e6, delta=1e-5)
    for _ in range(times):
        ledger.charge("x", noise_multiplier=noise_multiplier, attributes=tuple(ATTRS))
    return ledger.spent("x")


class TestRestarts:
    def test_secret_is_private_and_a_restart_keeps_the_subjects(self, dummy_pipe, tmp_path):
        kw = dict(ledger_dir=tmp_path / "ledger", feedback_dir=tmp_path / "feedback", num_inference_steps=2)
        first = app.build_demo(dummy_pipe, budget_epsilon=3.0, **kw).dp_space
        secret = tmp_path / "ledger" / app.SECRET_FILE
        assert secret.is_file() and (secret.stat().st_mode & 0o777) == 0o600 and len(secret.read_bytes()) == 32
        a = face(seed=2, size=128)
        v1 = first.protect(encoded(a), ATTRS, None, 1.0, None)
        second = app.build_demo(dummy_pipe, **kw).dp_space  # a restart (budget unset: the ledger's)
        assert second.ledger.path == first.ledger.path and second.config.budget_epsilon == 3.0
        v2 = second.protect(encoded(a, "JPEG"), ATTRS, None, 1.0, None)
        assert v2.session.subject_id == v1.session.subject_id
        assert len(second.ledger.history(v2.session.subject_id)) == 2
        assert sorted(p.name for p in (tmp_path / "ledger").iterdir() if not p.name.startswith("ledger.sqlite-")) \
            == [app.LEDGER_FILE, "subject_index.sqlite", app.SECRET_FILE]  # one ledger (and its index) for the Space

    def test_restarting_with_another_budget_is_refused(self, dummy_pipe, tmp_path, monkeypatch):
        kw = dict(ledger_dir=tmp_path / "ledger", feedback_dir=tmp_path / "feedback", num_inference_steps=2)
        app.build_demo(dummy_pipe, budget_epsilon=3.0, **kw)
        with pytest.raises(ValueError, match=r"budget_epsilon=5 differs from the Space ledger's 3"):
            app.build_demo(dummy_pipe, budget_epsilon=5.0, **kw)
        monkeypatch.setenv(app.ENV_BUDGET, "8")
        with pytest.raises(ValueError, match=rf"{app.ENV_BUDGET}=8 differs .* Set {app.ENV_BUDGET} to 3"):
            app.build_demo(dummy_pipe, **kw)
        with pytest.raises(ValueError, match=r"delta=0.001 differs"):
            app.build_demo(dummy_pipe, budget_epsilon=3.0, delta=1e-3, **kw)
        monkeypatch.setenv(app.ENV_BUDGET, "3")
        assert app.build_demo(dummy_pipe, **kw).dp_space.ledger.budget_epsilon == 3.0

    def test_the_secret_never_sits_in_the_feedback_folder(self, dummy_pipe, tmp_path):
        with pytest.raises(ValueError, match="ledger_dir .* must not be inside feedback_dir"):
            app.build_demo(dummy_pipe, ledger_dir=tmp_path / "f" / "ledger", feedback_dir=tmp_path / "f")


# ------------------------------------------------------------------------------------------------ served app
@pytest.mark.filterwarnings("ignore:::gradio.queueing")  # pandas deprecations inside Gradio's queue metrics
def test_smoke_launch_and_gradio_client(dummy_components, tmp_path, monkeypatch):
    """Serve the app, drive it with two `gradio_client.Client`s (two users), check their ledgers are separate,
    that a slow release does not block another user's request, and that the original never reaches the disk."""
    from gradio_client import Client

    from dpdiffusion import DPDiffusionPipeline

    class SlowPipe(DPDiffusionPipeline):  # a release that takes a while, to see the page stay responsive
        def __call__(self, *args, **kwargs):
            time.sleep(1.5)
            return super().__call__(*args, **kwargs)

    pipe = SlowPipe(**dummy_components)
    pipe.set_progress_bar_config(disable=True)
    gradio_tmp = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
    demo = app.build_demo(pipe, ledger_dir=tmp_path / "ledger", feedback_dir=tmp_path / "feedback",
                          budget_epsilon=3.0, num_inference_steps=2)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        alice = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "client-a"))
        bob = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "client-b"))
        original = alice.predict(3, api_name="/sample")
        assert original.startswith("data:image/png;base64,")
        weights = [1.0] * len(pipe.attribute_directions.names)
        job = alice.submit(original, ATTRS, 1.0, *weights, api_name="/protect")
        time.sleep(0.3)
        t0 = time.perf_counter()
        other = bob.predict(5, api_name="/sample")  # answered while alice's release is running
        assert time.perf_counter() - t0 < 1.0 and not job.done()
        progress = job.status().progress_data  # the page shows progress while generating
        assert progress and progress[0].desc in ("finding the face's budget", "charging the privacy ledger"), progress
        image_path, epsilon, spent, figures, status, report = job.result(timeout=60)
        assert epsilon == 1.0 and spent == pytest.approx(1.0, rel=1e-3) and "ε spent by this session" in figures
        assert PIL.Image.open(image_path).size == (256, 256)
        _, epsilon2, spent2, _, status2, _ = alice.predict(api_name="/more_privacy")
        assert epsilon2 == 0.5 and spent2 > spent, status2
        bob_result = bob.predict(other, ["dark_skin"], 2.0, *weights, api_name="/protect")
        assert bob_result[1] == 2.0 and bob_result[2] == pytest.approx(2.0, rel=1e-3)
        ledger = demo.dp_space.ledger
        subjects = ledger.subjects()
        assert len(subjects) == 2
        assert sorted(len(ledger.history(s)) for s in subjects) == [1, 2]
        # over budget for bob (epsilon 4 alone): refused, and bob's ledger is unchanged
        bob_sid = next(s for s in subjects if len(ledger.history(s)) == 1)
        refused = bob.predict(api_name="/more_detail")
        assert "Refused" in refused[4] and "whole budget" in refused[4]
        assert len(ledger.history(bob_sid)) == 1 and ledger.spent(bob_sid) == pytest.approx(2.0)
        final = alice.predict(api_name="/accept")
        assert "Final report" in final[5]
        # the originals were never written by the server: nowhere in Gradio's cache, the ledger or the feedback
        originals = [app.decode_original(original), app.decode_original(other)]
        for root in (gradio_tmp, tmp_path / "ledger", tmp_path / "feedback"):
            for path in (p for p in root.rglob("*") if p.is_file()):
                raw = path.read_bytes()
                assert original.split(",", 1)[1].encode() not in raw
                assert base64.b64decode(original.split(",", 1)[1])[:4096] not in raw
                if path.suffix.lower() in (".png", ".webp", ".jpg", ".jpeg"):
                    pixels = np.asarray(PIL.Image.open(path).convert("RGB"))
                    assert not any(pixels.shape == o.shape and np.array_equal(pixels, o) for o in originals)
    finally:
        demo.close()


def test_nothing_about_the_original_is_logged(dummy_pipe, tmp_path, caplog):
    space = make_space(dummy_pipe, tmp_path)
    url = app.image_to_data_url(face())
    with caplog.at_level("DEBUG"):
        view = space.protect(url, ATTRS, None, 1.0, None)
        space.feedback("more_privacy", view.session)
        space.protect("data:image/png;base64," + url.split(",", 1)[1][:200], ATTRS, None, 1.0, None)  # broken
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert url.split(",", 1)[1][:40] not in text and "data:image" not in text


def test_space_readme_front_matter_and_requirements():
    yaml = pytest.importorskip("yaml")
    text = (SPACES / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["license"] == "apache-2.0"
    assert tuple(int(p) for p in meta["sdk_version"].split(".")) >= (5, 0, 0)
    assert len(meta["sdk_version"].split(".")) == 3  # pinned exactly
    assert (SPACES / meta["app_file"]).is_file()
    assert "never written to a file" in text
    # the Space's requirements: third-party packages only (the package lies next to app.py), no extra index
    requirements = [line for line in (SPACES / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert any(line.startswith("torch") for line in requirements)
    assert not any(line.startswith("-") or "dpdiffusion" in line or "/" in line for line in requirements)


@pytest.mark.filterwarnings("ignore:::gradio.queueing")
def test_cli_space_serves_the_app(dummy_pipe, tmp_path):
    """``dpdiffusion space --port P`` serves the app shipped in the package on the model named by the environment."""
    import os
    import socket
    import subprocess
    import urllib.request

    dummy_pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DPDIFFUSION_SPACE_MODEL=str(tmp_path / "model"), DPDIFFUSION_SPACE_DIR=str(tmp_path / "d"),
               DPDIFFUSION_SPACE_STEPS="2", DPDIFFUSION_SPACE_TORCH_THREADS="1", GRADIO_SERVER_NAME="127.0.0.1",
               GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "gradio"))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from dpdiffusion.cli import main; sys.exit(main())",
                             "space", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10).read())
        assert "How much privacy is enough?" in json.dumps(config)
        assert (tmp_path / "d" / "ledger").is_dir() and (tmp_path / "d" / "feedback").is_dir()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

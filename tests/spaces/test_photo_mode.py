"""The Space's photo mode: every face of a real photo (scikit-image's) protected on its own budget, the rest kept."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def space(tmp_path):
    from dpd_test_components import get_dummy_components

    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.privacy.ledger import PrivacyLedger
    from dpdiffusion.space.config import SpaceConfig
    from dpdiffusion.space.feedback import FeedbackLog
    from dpdiffusion.space.session import DPSpace

    pipe = DPDiffusionPipeline(**get_dummy_components(image_size=32))
    pipe.set_progress_bar_config(disable=True)
    config = SpaceConfig(budget_epsilon=1.5, num_inference_steps=1)
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=1.5, delta=config.delta)
    return DPSpace(pipe, ledger=ledger, feedback=FeedbackLog(tmp_path / "feedback"), config=config)


def test_a_photo_is_protected_face_by_face_and_each_face_keeps_its_budget(space):
    from skimage import data

    from dpdiffusion.space.photo import protect_photo

    photo = data.astronaut()
    annotated, message = protect_photo(space, photo, ["dark_skin"], 1.0)
    image, boxes = annotated
    assert image.shape == photo.shape and len(boxes) == 1 and "1 face" in message
    subjects = space.ledger.subjects()
    assert len(subjects) == 1 and space.ledger.spent(subjects[0]) == pytest.approx(1.0, rel=1e-9)
    # the same photo re-uploaded as JPEG is the same face: two releases at epsilon 1 compose to 1.4652 (<= 1.5) ...
    buf = io.BytesIO()
    PIL.Image.fromarray(photo).save(buf, format="JPEG", quality=90)
    again = np.asarray(PIL.Image.open(buf).convert("RGB"))
    annotated, message = protect_photo(space, again, ["dark_skin"], 1.0)
    assert annotated is not None and space.ledger.subjects() == subjects
    spent = space.ledger.spent(subjects[0])
    assert spent == pytest.approx(1.4652, abs=1e-4)
    # ... and a third would not fit: refused, nothing charged
    annotated, message = protect_photo(space, photo, ["dark_skin"], 1.0)
    assert annotated is None and "Refused" in message
    assert space.ledger.subjects() == subjects and space.ledger.spent(subjects[0]) == spent


def test_a_photo_without_a_face_releases_and_charges_nothing(space):
    from skimage import data

    from dpdiffusion.space.photo import protect_photo

    annotated, message = protect_photo(space, data.coffee(), ["dark_skin"], 1.0)
    assert annotated is None and "No face" in message and space.ledger.subjects() == []
    annotated, message = protect_photo(space, data.astronaut(), [], 1.0)
    assert annotated is None and "at least one attribute" in message

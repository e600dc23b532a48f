"""The Space's photo mode with a model that knows only synthetic faces refuses photos (before decoding them) with
the model's domain and the commands that serve real faces, unless the Space was launched with
``--allow-domain-mismatch``."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _space(tmp_path, **config):
    from dpd_test_components import get_dummy_components

    from dpdiffusion import DPDiffusionPipeline
    from dpdiffusion.models.training_domain import synthfaces_domain
    from dpdiffusion.privacy.ledger import PrivacyLedger
    from dpdiffusion.space.config import SpaceConfig
    from dpdiffusion.space.feedback import FeedbackLog
    from dpdiffusion.space.session import DPSpace

    pipe = DPDiffusionPipeline(**get_dummy_components(image_size=32), training_domain=synthfaces_domain(32))
    pipe.set_progress_bar_config(disable=True)
    cfg = SpaceConfig(budget_epsilon=1.5, num_inference_steps=1, **config)
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=1.5, delta=cfg.delta)
    return DPSpace(pipe, ledger=ledger, feedback=FeedbackLog(tmp_path / "feedback"), config=cfg)


def test_photo_mode_with_a_synthetic_model_is_refused_with_the_way_to_real_faces(tmp_path):
    from skimage import data

    from dpdiffusion.space.photo import protect_photo

    space = _space(tmp_path)
    for photo in (data.astronaut(), "not even a picture"):  # refused before the upload is decoded
        annotated, message = protect_photo(space, photo, ["dark_skin"], 1.0)
        assert annotated is None
        assert message.startswith("**Refused**: This photo is refused: this model was trained only on SynthFaces, "
                                  "synthetic cartoon faces at 32 px")
        assert "```bash\npython scripts/convert_diffae_checkpoint.py" in message
        assert "\ndpdiffusion space --model ffhq256-dp\n```" in message
        assert "`--allow-domain-mismatch` when the Space is started" in message
        assert message.endswith("Nothing was released and nothing was charged.")
    assert space.ledger.subjects() == []


def test_photo_mode_with_the_opt_in_runs_as_before(tmp_path):
    pytest.importorskip("dlib")
    from skimage import data

    from dpdiffusion.space.photo import protect_photo

    space = _space(tmp_path, allow_domain_mismatch=True)
    photo = data.astronaut()
    annotated, message = protect_photo(space, photo, ["dark_skin"], 1.0)
    image, boxes = annotated
    assert image.shape == photo.shape and len(boxes) == 1 and "1 face" in message
    assert len(space.ledger.subjects()) == 1


def test_the_launch_flag_reaches_the_app_and_is_validated(monkeypatch):
    from dpdiffusion import cli
    from dpdiffusion.space import app
    from dpdiffusion.space.config import SpaceConfig

    seen = []
    monkeypatch.setattr(app, "main", lambda argv=None: seen.append(argv))
    assert cli.main(["space", "--allow-domain-mismatch", "--port", "7861"]) == 0
    assert seen == [["--port", "7861", "--allow-domain-mismatch"]]
    with pytest.raises(SystemExit) as info:
        cli.main(["space", "--allow-domain-mismatch", "--export", "somewhere"])
    assert info.value.code == 2
    with pytest.raises(ValueError, match="allow_domain_mismatch must be True or False"):
        SpaceConfig(allow_domain_mismatch="yes")

"""A model declares its training domain (``pipe.training_domain``, ``model_index.json``, the card), and
``faces="detect"`` refuses real photos with a model that knows only synthetic faces unless told otherwise.

The failing case (issue 33): scikit-image's astronaut through ``pipe(photo, faces="detect")`` with the embedded
default came back with a blurred 32 px SynthFaces cartoon pasted over her face, and nothing said why."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dpdiffusion import DPDiffusionPipeline
from dpdiffusion.models.training_domain import (REAL_FACE_COMMANDS, DomainMismatchError, TrainingDomain,
                                                check_photo_domain, dataset_domain, official_diffae_domain,
                                                photo_refusal_message, synthfaces_domain)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "diffae"


def _convert_script():
    spec = importlib.util.spec_from_file_location("convert_diffae_checkpoint_domain",
                                                  ROOT / "scripts" / "convert_diffae_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def default_pipe():
    from dpdiffusion.models.default import DEFAULT_MODEL, default_model_available

    if not default_model_available():
        pytest.skip("the embedded default model is not installed")
    pipe = DPDiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8, one real face


def test_the_embedded_default_declares_synthfaces_at_32_px(default_pipe):
    from dpdiffusion.models.default import DEFAULT_MODEL

    domain = default_pipe.training_domain
    assert (domain.name, domain.resolution, domain.synthetic) == ("SynthFaces", 32, True)
    assert domain.resolution == default_pipe.image_size and "cartoon" in domain.description
    assert domain.summary() == "SynthFaces, 32 px, synthetic"
    card = (Path(DEFAULT_MODEL) / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["training_domain"] == domain.to_dict() and "synthetic-data" in front["tags"]
    assert "## Training domain" in card and "**SynthFaces, 32 px, synthetic**" in card
    assert all(command in card for command in REAL_FACE_COMMANDS)


def test_detect_with_the_embedded_default_is_refused_on_a_real_photo(default_pipe, astronaut, tmp_path):
    """The refusal says what the model is and gives the two commands; nothing is detected, released or charged."""
    from dpdiffusion.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", budget_epsilon=5.0, delta=1e-5)
    with pytest.raises(DomainMismatchError) as info:
        default_pipe(astronaut, faces="detect", epsilon=1.0, ledger=ledger, subject_ids=["astronaut"])
    text = str(info.value)
    assert isinstance(info.value, ValueError)
    assert text == photo_refusal_message(default_pipe.training_domain)
    assert text.startswith("faces='detect' is refused: this model was trained only on SynthFaces, synthetic cartoon "
                           "faces at 32 px (no photograph of a real person), so on a real photo it would paste a "
                           "blurred 32 px cartoon face over each real face.")
    assert "python scripts/convert_diffae_checkpoint.py --checkpoint ffhq256_autoenc/last.ckpt" in text
    assert "dpdiffusion protect --model ffhq256-dp --faces detect" in text
    assert text.endswith("pass allow_domain_mismatch=True.")
    assert ledger.subjects() == []


def test_the_opt_in_runs_detect_exactly_as_before(default_pipe, astronaut):
    """``allow_domain_mismatch=True`` only lifts the refusal: the output equals what ``faces="detect"`` ran before
    the refusal existed (``protect_photos`` with the same arguments), bit for bit in the seeded mode."""
    pytest.importorskip("dlib")
    from dpdiffusion.faces.photos import protect_photos

    kwargs = dict(epsilon=1.0, num_inference_steps=5, secure_mode=False, output_type="np")
    out = default_pipe(astronaut, faces="detect", allow_domain_mismatch=True,
                       generator=torch.Generator().manual_seed(0), **kwargs)
    before = protect_photos(default_pipe, astronaut, generator=torch.Generator().manual_seed(0), **kwargs)
    assert out.images[0].shape == astronaut.shape and len(out.faces[0]) == 1
    np.testing.assert_array_equal(out.images[0], before.images[0])
    with pytest.raises(ValueError, match="allow_domain_mismatch must be True or False"):
        default_pipe(astronaut, faces="detect", allow_domain_mismatch="yes")


def test_the_domain_round_trips_through_save_pretrained_and_the_hub_folder(dummy_components, tmp_path):
    domain = synthfaces_domain(16)
    pipe = DPDiffusionPipeline(**dummy_components, training_domain=domain)
    assert pipe.training_domain == domain
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["training_domain"] == domain.to_dict()
    assert DPDiffusionPipeline.from_pretrained(tmp_path / "saved").training_domain == domain
    pipe.save_hub_folder(tmp_path / "hub", repo_id="someone/tiny", command="python make.py")  # push_to_hub's folder
    assert DPDiffusionPipeline.from_pretrained(tmp_path / "hub").training_domain == domain
    front = yaml.safe_load((tmp_path / "hub" / "README.md").read_text().split("---")[1])
    assert front["training_domain"] == domain.to_dict()


def test_an_old_folder_without_the_field_loads_as_unknown_and_is_not_refused(dummy_components, tmp_path):
    DPDiffusionPipeline(**dummy_components).save_pretrained(tmp_path)
    index_file = tmp_path / "model_index.json"
    index = json.loads(index_file.read_text())
    index.pop("training_domain", None)  # as saved before models declared it
    index_file.write_text(json.dumps(index))
    pipe = DPDiffusionPipeline.from_pretrained(tmp_path)
    assert pipe.training_domain.name == "unknown" and not pipe.training_domain.known
    assert pipe.training_domain.resolution is None and pipe.training_domain.synthetic is False
    check_photo_domain(pipe.training_domain)  # not refused: nothing says it is synthetic
    from dpdiffusion.models.pipeline_card import render_pipeline_card

    card = render_pipeline_card(tmp_path, command="x")
    assert "Not declared" in card and "synthetic-data" not in card
    assert "steps on an undeclared dataset" in card


def test_bad_domains_are_refused_naming_the_field(dummy_components):
    for bad, match in (("SynthFaces", "training_domain must be None, a TrainingDomain or a dict"),
                       ({"name": "x"}, "training_domain must have exactly the fields"),
                       ({"name": "", "resolution": 32, "synthetic": True, "description": ""}, "name must be"),
                       ({"name": "x", "resolution": 0, "synthetic": True, "description": ""}, "resolution must be"),
                       ({"name": "x", "resolution": 32, "synthetic": "yes", "description": ""}, "synthetic must be")):
        with pytest.raises(ValueError, match=match):
            DPDiffusionPipeline(**dummy_components, training_domain=bad)


def test_the_card_of_a_real_face_model_says_so(dummy_components, tmp_path):
    from dpdiffusion.models.pipeline_card import render_pipeline_card

    domain = official_diffae_domain("ffhq", 16)
    DPDiffusionPipeline(**dummy_components, training_domain=domain).save_pretrained(tmp_path)
    card = render_pipeline_card(tmp_path, command="x")
    front = yaml.safe_load(card.split("---")[1])
    assert front["training_domain"]["name"] == "FFHQ" and "synthetic-data" not in front["tags"]
    assert "**FFHQ, 16 px, real photographs**" in card and "trained on synthetic faces only" not in card
    assert "trained on FFHQ" in card


@pytest.mark.parametrize("data_name, domain, name", [("ffhqlmdb256", "auto", "FFHQ"), ("", "celeba-hq", "CelebA-HQ")])
def test_a_converted_official_checkpoint_declares_its_faces_and_is_not_refused(tmp_path, astronaut, data_name,
                                                                             domain, name):
    """The converter declares the checkpoint's training set at its resolution (read from the official
    ``data_name``, e.g. ``ffhqlmdb256`` for ffhq256_autoenc, or ``--domain``); such a pipeline runs photos."""
    pytest.importorskip("dlib")
    convert = _convert_script()
    fixture = FIX / "tiny16_conv_resample"
    ckpt = torch.load(fixture / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"] = dict(ckpt["hyper_parameters"], data_name=data_name)
    torch.save(ckpt, tmp_path / "last.ckpt")
    out = convert.convert(tmp_path / "last.ckpt", fixture / "latent.ckpt", tmp_path / "pipe",
                          classifier=fixture / "cls.ckpt", domain=domain)
    pipe = DPDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.training_domain.name, pipe.training_domain.resolution, pipe.training_domain.synthetic) == \
        (name, 16, False)
    card = (out / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["training_domain"]["name"] == name
    assert f"**{name}, 16 px, real photographs**" in card
    assert json.loads((out / "conversion.json").read_text())["training_domain"]["name"] == name
    result = pipe(astronaut, faces="detect", attributes=["Male"], epsilon=1.0, num_inference_steps=2,
                  output_type="np")  # no opt-in needed
    assert result.images[0].shape == astronaut.shape and len(result.faces[0]) == 1


def test_the_converter_without_a_known_training_set_declares_unknown(tmp_path, caplog):
    convert = _convert_script()
    fixture = FIX / "tiny16_conv_resample"  # the fixture's data_name is empty
    out = convert.convert(fixture / "last.ckpt", fixture / "latent.ckpt", tmp_path / "pipe")
    assert DPDiffusionPipeline.from_pretrained(out).training_domain.name == "unknown"
    assert "pass --domain" in caplog.text
    with pytest.raises(ValueError, match="--domain must be 'auto' or one of"):
        convert.convert(fixture / "last.ckpt", fixture / "latent.ckpt", tmp_path / "bad", domain="faces")
    assert not (tmp_path / "bad").exists()


def test_the_trainer_declares_the_dataset_it_trained_on(tmp_path):
    from dpdiffusion.training.train_autoencoder import AutoencoderTrainingConfig, train_autoencoder

    config = AutoencoderTrainingConfig(output_dir=str(tmp_path / "run"), unet_type="diffae", num_images=64,
                                       image_size=16, latent_dim=8, unet_channels=[8, 16], encoder_channels=[8, 16],
                                       batch_size=16, max_steps=1, checkpoint_every=1, progress=False)
    pipe = DPDiffusionPipeline.from_pretrained(train_autoencoder(config))
    assert pipe.training_domain == synthfaces_domain(16)
    assert dataset_domain("celeba/faces", 64).name == "celeba/faces"
    local = dataset_domain(str(tmp_path), 64)  # a local folder's path is the owner's: never published
    assert local.name == "a local dataset" and str(tmp_path) not in local.description and not local.synthetic


def test_check_photo_domain_only_refuses_synthetic_domains():
    check_photo_domain(official_diffae_domain("celeba-hq", 256))
    check_photo_domain(TrainingDomain.from_config(None))
    check_photo_domain(synthfaces_domain(32), allow_domain_mismatch=True)
    with pytest.raises(DomainMismatchError, match="--faces detect is refused"):
        check_photo_domain(synthfaces_domain(32), what="--faces detect", opt_in="--allow-domain-mismatch")

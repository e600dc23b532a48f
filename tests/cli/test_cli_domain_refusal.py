"""``dpdiffusion protect --faces detect`` with a model that knows only synthetic faces (the embedded default) refuses a
real photo before anything is written, saying what the model is and how to make a real-face pipeline;
``--allow-domain-mismatch`` runs it as before (to test the plumbing). Fails before issue 33's change, which pasted
a 32 px cartoon over the astronaut's face and exited 0."""

from __future__ import annotations

import json
import subprocess
import sys

import PIL.Image
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def photos(tmp_path):
    from skimage import data

    from dpdiffusion.models.default import default_model_available

    if not default_model_available():
        pytest.skip("the embedded default model is not installed")
    src = tmp_path / "photos"
    src.mkdir()
    PIL.Image.fromarray(data.astronaut()).save(src / "astronaut.png")
    return src


def test_protect_faces_detect_with_the_embedded_default_is_refused_and_writes_nothing(photos, tmp_path):
    out = tmp_path / "protected"
    res = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "protect", "--faces", "detect", "--source",
                          str(photos), "--output-dir", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert ("dpdiffusion protect: error: --faces detect is refused: this model was trained only on SynthFaces, "
            "synthetic cartoon faces at 32 px (no photograph of a real person), so on a real photo it would paste a "
            "blurred 32 px cartoon face over each real face.") in res.stderr
    assert ("\n    python scripts/convert_diffae_checkpoint.py --checkpoint ffhq256_autoenc/last.ckpt --latent-stats "
            "ffhq256_autoenc/latent.pkl --classifier ffhq256_autoenc_cls/last.ckpt --output ffhq256-dp\n    "
            "dpdiffusion protect --model ffhq256-dp --faces detect --attributes Male --source PHOTOS --output-dir "
            "PROTECTED\n") in res.stderr
    assert "pass --allow-domain-mismatch." in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and not (tmp_path / "protected-private").exists()


def test_the_opt_in_protects_the_photo_as_before(photos, tmp_path):
    pytest.importorskip("dlib")
    from dpdiffusion import cli

    out = tmp_path / "protected"
    argv = ["protect", "--faces", "detect", "--allow-domain-mismatch", "--source", str(photos), "--output-dir",
            str(out), "--insecure-seed", "0", "--no-progress"]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 1 and len(records[0]["faces"]) == 1
    assert PIL.Image.open(out / records[0]["file_name"]).size == (512, 512)  # the whole photo, its face pasted
    settings = json.loads((tmp_path / "protected-private" / "protect_config.json").read_text())
    assert "allow_domain_mismatch" not in settings  # a permission, not a setting: a resumed run may differ in it

"""FFHQ alignment: the quad of the official recipe, and the align -> inverse-warp round trip."""

from __future__ import annotations

import numpy as np
import pytest

from dpdiffusion.faces import align_face, ffhq_quad, find_faces, paste_face, paste_mask, unwarp_crop


def _landmarks(eye_l=(40.0, 50.0), eye_r=(80.0, 50.0), mouth_l=(45.0, 95.0), mouth_r=(75.0, 95.0), angle=0.0,
               centre=(60.0, 70.0)):
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48], lm[48], lm[54] = eye_l, eye_r, mouth_l, mouth_r
    lm[49:54] = lm[55:60] = np.mean([mouth_l, mouth_r], axis=0)
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        lm = (lm - centre) @ np.array([[c, s], [-s, c]]) + centre
    return lm


def test_quad_follows_the_ffhq_recipe():
    lm = _landmarks()
    quad = ffhq_quad(lm)
    # eye_to_eye = (40, 0), eye_to_mouth = (0, 45): x = (40 + 45, 0) scaled to max(2 * 40, 1.8 * 45) = 81
    # c = eye_avg + 0.1 eye_to_mouth = (60.5, 50.5) + (0, 4.5)   (+0.5: landmarks are pixel centres)
    c = np.array([60.5, 55.0])
    np.testing.assert_allclose(quad, [c + (-81, -81), c + (-81, 81), c + (81, 81), c + (81, -81)], atol=1e-9)


def test_quad_rotates_with_the_face():
    angle = np.deg2rad(20.0)
    q0, q1 = ffhq_quad(_landmarks()), ffhq_quad(_landmarks(angle=angle))
    side0, side1 = q0[3] - q0[0], q1[3] - q1[0]
    assert np.hypot(*side1) == pytest.approx(np.hypot(*side0))
    assert np.arctan2(side1[1], side1[0]) == pytest.approx(angle)
    assert np.dot(q1[3] - q1[0], q1[1] - q1[0]) == pytest.approx(0.0, abs=1e-9)  # a square: a similarity


def test_bad_landmarks_and_size():
    with pytest.raises(ValueError, match="landmarks must be a finite \\(68, 2\\)"):
        ffhq_quad(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="size must be an integer >= 8"):
        align_face(np.zeros((64, 64, 3), np.uint8), _landmarks(), 4)
    with pytest.raises(ValueError, match="photo must be an \\(H, W, 3\\) uint8"):
        align_face(np.zeros((64, 64), np.float32), _landmarks(), 32)


@pytest.mark.parametrize("angle_deg, size", [(0.0, 32), (17.0, 32), (17.0, 8)])
def test_round_trip_of_a_constant_image_is_exact(angle_deg, size):
    # the quad of these landmarks leaves the 120 x 140 photo: the FFHQ padding (reflect, blur, median) is exercised;
    # at size 8 the region is shrunk 10x first
    photo = np.full((120, 140, 3), (31, 200, 77), dtype=np.uint8)
    aligned = align_face(photo, _landmarks(angle=np.deg2rad(angle_deg)), size)
    assert (aligned.crop == photo[0, 0]).all()
    pasted, _ = paste_face(photo, aligned.crop, aligned.quad)
    assert np.array_equal(pasted, photo)


@pytest.mark.parametrize("size", [64, 16])  # 16: the face is shrunk 7x first (box average), as FFHQ does
def test_round_trip_of_a_smooth_image_is_exact_up_to_interpolation(size):
    yy, xx = np.mgrid[:400, :400]
    photo = np.stack([xx * 0.5 + 20, yy * 0.5 + 10, (xx + yy) * 0.25 + 5], -1).round().astype(np.uint8)
    lm = _landmarks(eye_l=(170, 180), eye_r=(230, 180), mouth_l=(180, 245), mouth_r=(220, 245), angle=0.3,
                    centre=(200, 200))
    aligned = align_face(photo, lm, size)
    assert aligned.quad.min() > 30 and aligned.quad.max() < 370  # more than the 10 % border inside: no padding
    box, back, s, t = unwarp_crop(aligned.crop, aligned.quad, photo.shape)
    x0, y0, x1, y1 = box
    interior = (s > 0.05) & (s < 0.95) & (t > 0.05) & (t < 0.95)
    err = np.abs(back - photo[y0:y1, x0:x1])[interior]
    assert err.mean() < 0.6 and err.max() <= 2.0  # rounding of the crop to uint8 + bilinear resampling


def test_aligned_astronaut_puts_eyes_where_ffhq_does(astronaut):
    face = find_faces(astronaut)[0]
    aligned = align_face(astronaut, face.landmarks, 256)
    assert aligned.crop.shape == (256, 256, 3)
    # forward-map the landmarks into the crop: FFHQ images have the eyes nearly level at about 0.47 of the height
    # (480 of 1024 px), either side of the centre
    origin, u, v = aligned.quad[0], aligned.quad[3] - aligned.quad[0], aligned.quad[1] - aligned.quad[0]
    pts = face.landmarks + 0.5 - origin
    s, t = pts @ u / (u @ u), pts @ v / (v @ v)
    eye_l, eye_r = (s[36:42].mean(), t[36:42].mean()), (s[42:48].mean(), t[42:48].mean())
    assert eye_l[1] == pytest.approx(eye_r[1], abs=0.02)
    assert 0.42 < eye_l[1] < 0.52 and 0.25 < eye_l[0] < 0.5 < eye_r[0] < 0.75
    mask = paste_mask(aligned.quad, astronaut.shape)
    assert mask.max() == 1.0 and mask[0, 0] == 0.0


def test_bilinear_sampler_matches_scipy():
    from scipy import ndimage

    from dpdiffusion.faces.align import sample_bilinear

    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    s, t = rng.uniform(-0.2, 1.2, (2, 500))
    ref = np.stack([ndimage.map_coordinates(crop[..., c].astype(np.float64), [t * 16 - 0.5, s * 16 - 0.5], order=1,
                                            mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(sample_bilinear(crop, s, t), ref, atol=1e-3)

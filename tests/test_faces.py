"""Alignment and paste-back: the geometry every method relies on."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest

from anonymize.faces.align import align_face, ffhq_quad, transform_points, whole_image_as_face
from anonymize.faces.paste import Region, paste_back, paste_face, region_mask, replace_whole
from anonymize.faces.types import eye_and_mouth_points
from tests.helpers import five_points, textured_image


def test_level_eyes_give_an_axis_aligned_square_centred_below_the_eyes():
    landmarks = five_points((200, 150), (260, 150), (205, 210), (255, 210))
    quad = ffhq_quad(landmarks)
    top_left, bottom_left, bottom_right, top_right = quad
    assert top_left[1] == pytest.approx(top_right[1])
    assert top_left[0] == pytest.approx(bottom_left[0])
    side = top_right[0] - top_left[0]
    assert bottom_left[1] - top_left[1] == pytest.approx(side)
    # FFHQ: the crop spans twice the eye distance or 1.8 times the eye-to-mouth distance, each way.
    assert side == pytest.approx(2 * max(60 * 2.0, 60 * 1.8))
    centre = quad.mean(axis=0)
    assert centre == pytest.approx((230, 150 + 0.1 * 60))


def test_alignment_puts_the_eyes_level_whatever_the_head_roll():
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    upright = five_points((-30, -20), (30, -20), (-25, 40), (25, 40))
    landmarks = upright @ rotation.T + (250, 200)
    aligned = align_face(textured_image(), landmarks, 256)
    eye_left, eye_right, _, _ = eye_and_mouth_points(aligned.landmarks)
    assert eye_left[1] == pytest.approx(eye_right[1], abs=1e-6)
    assert eye_left[0] < eye_right[0]
    assert aligned.crop.shape == (256, 256, 3)


def test_68_point_landmarks_use_eye_and_mouth_corners():
    landmarks = np.zeros((68, 2))
    landmarks[36:42] = (100, 100)
    landmarks[42:48] = (160, 100)
    landmarks[48] = (110, 160)
    landmarks[54] = (150, 160)
    eye_left, eye_right, mouth_left, mouth_right = eye_and_mouth_points(landmarks)
    assert tuple(eye_left) == (100, 100) and tuple(eye_right) == (160, 100)
    assert tuple(mouth_left) == (110, 160) and tuple(mouth_right) == (150, 160)
    with pytest.raises(ValueError, match="5 or 68 landmarks"):
        eye_and_mouth_points(np.zeros((7, 2)))


def test_the_kept_matrix_maps_image_landmarks_onto_the_crop_and_back():
    landmarks = five_points((180, 140), (250, 160), (190, 220), (240, 230))
    aligned = align_face(textured_image(), landmarks, 128)
    in_crop = transform_points(landmarks, aligned.matrix)
    assert np.allclose(in_crop, aligned.landmarks)
    assert np.allclose(transform_points(in_crop, aligned.inverse_matrix()), landmarks)


def test_paste_back_changes_only_the_masked_face_region():
    image = textured_image()
    landmarks = five_points((200, 150), (260, 150), (205, 210), (255, 210))
    aligned = align_face(image, landmarks, 256)
    mask = region_mask(256, "ellipse")
    white = np.full_like(aligned.crop, 255)
    result = paste_back(image, white, aligned.matrix, mask)
    changed = np.any(result != image, axis=2)
    assert changed[170, 230]  # between eyes and mouth: inside the face
    ys, xs = np.nonzero(changed)
    quad = ffhq_quad(landmarks)
    assert xs.min() >= quad[:, 0].min() and xs.max() <= quad[:, 0].max()
    assert ys.min() >= quad[:, 1].min() and ys.max() <= quad[:, 1].max()
    # Outside the changed set, every pixel is the original, bit for bit.
    assert np.array_equal(result[~changed], image[~changed])


def test_paste_face_takes_a_crop_of_another_resolution_at_its_own_resolution():
    image = textured_image()
    aligned = align_face(image, five_points((200, 150), (260, 150), (205, 210), (255, 210)), 64)
    black = np.zeros((256, 256, 3), np.uint8)
    result = paste_face(image, black, aligned, Region("ellipse"))
    assert result.shape == image.shape
    assert np.all(result[170, 230] == 0)  # the face centre comes from the crop
    with pytest.raises(ValueError, match="same size"):
        paste_back(image, black, aligned.matrix, region_mask(64))


def test_face_partly_outside_the_photo_is_pasted_without_error():
    image = textured_image(200, 200)
    aligned = align_face(image, five_points((-10, 40), (40, 40), (-5, 90), (35, 90)), 128)
    result = paste_back(image, np.zeros_like(aligned.crop), aligned.matrix, region_mask(128))
    assert result.shape == image.shape and np.any(result != image)


def test_soft_mask_is_one_in_the_middle_zero_at_the_border_and_scales():
    mask = region_mask(256, "ellipse", scale=1.0, feather=0.04)
    assert mask[136, 128] == pytest.approx(1.0, abs=1e-3)
    assert mask[0, 0] == 0 and mask[255, 255] == 0
    assert 0 < mask.mean() < 1
    assert region_mask(256, "ellipse", scale=1.3).sum() > mask.sum()
    assert np.all(region_mask(32, "full") == 1)


def test_landmark_hull_region_covers_the_face_and_forehead():
    landmarks = np.full((68, 2), 128.0)
    jaw = np.linspace(np.pi, 0, 17)
    landmarks[0:17] = np.stack([128 + 70 * np.cos(jaw), 110 + 110 * np.sin(jaw)], axis=1)  # chin at (128, 220)
    landmarks[17:27] = np.stack([np.linspace(70, 186, 10), np.full(10, 90)], axis=1)  # brows
    landmarks[27] = (128, 100)  # nose bridge
    mask = region_mask(256, "hull", landmarks=landmarks, feather=0.0)
    assert mask[150, 128] == 1.0
    assert mask[60, 128] == 1.0  # forehead above the brows
    with pytest.raises(ValueError, match="needs landmarks"):
        region_mask(256, "hull")


def test_whole_image_alignment_round_trips_to_the_image_size():
    image = textured_image(218, 178)
    aligned = whole_image_as_face(image, 256)
    assert aligned.crop.shape == (256, 256, 3)
    assert replace_whole(image, aligned.crop).shape == image.shape
    corners = transform_points(np.array([[0, 0], [178, 218]]), aligned.matrix)
    assert np.allclose(corners, [[0, 0], [256, 256]])


def test_our_retinaface_module_gives_facexlib_s_outputs_on_the_real_weights(shared_dir):
    """The network module (anonymize.models.retinaface) against facexlib's, both with the pinned weights and
    plain ReLUs, on a real photo: the same three outputs. Ours exists so a run never imports torchvision."""
    import torch
    from facexlib.detection.retinaface import RetinaFace

    from anonymize.models.checkpoint import load_checkpoint
    from anonymize.models.retinaface import RetinaFaceMobile

    state = {key.removeprefix("module."): value for key, value in load_checkpoint(shared_dir / "weights" / "retinaface_mobilenet0.25.pth").items()}
    theirs = RetinaFace(network_name="mobile0.25", half=False, device="cpu")
    theirs.load_state_dict(state, strict=True)
    for module in theirs.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.LeakyReLU):
                setattr(module, name, torch.nn.ReLU(inplace=True))
    ours = RetinaFaceMobile()
    ours.load_state_dict(state, strict=True)
    rgb = np.asarray(Image.open(shared_dir / "data" / "portraits" / "multi_obama_and_biden.jpg").convert("RGB"))
    pixels = torch.from_numpy(rgb[:301, :417].copy()).permute(2, 0, 1)[None].float() - 117.0  # odd sizes: upsampling
    with torch.no_grad():
        for mine, reference in zip(ours.eval()(pixels), theirs.eval()(pixels)):
            assert mine.shape == reference.shape
            assert torch.allclose(mine, reference, atol=1e-5, rtol=1e-5)

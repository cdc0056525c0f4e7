"""How outputs look (issue 24): the share of changed pixels outside the face, and face sharpness.

The synthetic cases have known geometry, so the expected shares are computed by hand: a face whose 68
landmarks span a 100 px square centred at (200, 200) has the face region of the 140 px square around the
same centre (the hull scaled 1.4), 141 x 141 pixels as rasterised (both edges included).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anonymize.io.decode import decode_image
from anonymize.io.write import encode_image
from anonymize.metrics.appearance import (
    CHANGE_THRESHOLD,
    FaceLandmarker,
    changed_outside_share,
    count_changes,
    face_region,
    faces_mask,
    laplacian_sharpness,
    sharpness_ratio,
)
from tests.helpers import cli, copy_celeba_ids, synthetic_face

SIZE = 400
CENTRE = 200
HALF_SIDE = 50  # the landmarks' hull: the square [150, 250]^2
SCALED_HALF_SIDE = 70  # x 1.4: the face region [130, 270]^2


def square_landmarks(crowd_corner: bool = True) -> np.ndarray:
    """68 points whose hull is the square [150, 250]^2; the 64 inner points crowd near one corner, so their
    mean is far from the hull's centre (the region must grow about the hull's centre, not the mean)."""
    corners = np.array([[150, 150], [250, 150], [250, 250], [150, 250]], np.float64)
    inner = np.random.default_rng(0).uniform(152, 175 if crowd_corner else 248, size=(64, 2))
    return np.concatenate([corners, inner])


def noise(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def photo_like(seed: int = 0) -> np.ndarray:
    """Smooth colour fields plus fine texture and a few hard edges: JPEG has work to do on it."""
    image = synthetic_face(seed, SIZE).astype(np.int16)
    image += np.random.default_rng(seed).integers(-6, 7, image.shape, dtype=np.int16)
    image = np.clip(image, 0, 255).astype(np.uint8)
    cv2.rectangle(image, (40, 300), (120, 380), (250, 250, 250), -1)
    cv2.circle(image, (330, 80), 40, (10, 20, 30), -1)
    return image


def test_the_face_region_is_the_landmark_hull_scaled_about_its_own_centre():
    region = face_region(square_landmarks(), (SIZE, SIZE, 3))
    rows, columns = np.nonzero(region)
    low, high = CENTRE - SCALED_HALF_SIDE, CENTRE + SCALED_HALF_SIDE
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (low, high, low, high)
    assert region.sum() == (2 * SCALED_HALF_SIDE + 1) ** 2  # a filled square, nothing else
    assert np.array_equal(face_region(square_landmarks(crowd_corner=False), (SIZE, SIZE)), region)


def test_a_square_paste_of_another_image_counts_its_pixels_outside_the_face():
    original, other = noise(1), noise(2)
    output = original.copy()
    paste_half = 120  # a 240 px square of another photo over the face, as a whole aligned crop pasted back
    box = slice(CENTRE - paste_half, CENTRE + paste_half)
    output[box, box] = other[box, box]
    mask = face_region(square_landmarks(), original.shape)
    # by hand: 240^2 changed pixels, of which the 141^2 of the face region are inside
    expected = 1 - 141**2 / 240**2  # 0.655; 1 - 140^2 / 240^2 = 0.660 with a continuous square
    share = changed_outside_share(original, output, [mask])
    assert share == pytest.approx(expected, abs=0.002)
    count = count_changes(original, output, [mask])
    assert count.changed == pytest.approx(240**2, rel=0.002)  # two noise images differ almost everywhere


def test_a_change_confined_to_the_face_counts_nothing_outside():
    original = photo_like()
    output = original.copy()
    hull = np.zeros(original.shape[:2], np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(square_landmarks().astype(np.int32)), 1)
    output[hull.astype(bool)] = 255 - output[hull.astype(bool)]  # the face itself, inverted
    masks = [face_region(square_landmarks(), original.shape)]
    count = count_changes(original, output, masks)
    assert count.changed > 9000 and count.outside == 0 and count.share == 0.0


def test_nothing_changed_has_no_share_and_a_second_face_elsewhere_is_inside_too():
    original = photo_like()
    assert changed_outside_share(original, original.copy(), [face_region(square_landmarks(), original.shape)]) is None
    second = square_landmarks() + [-120, 100]  # another face, lower left
    output = original.copy()
    output[240:330, 40:120] = 255 - output[240:330, 40:120]  # inside the second face's region only
    one, both = [face_region(square_landmarks(), original.shape)], faces_mask([square_landmarks(), second], original.shape)
    assert changed_outside_share(original, output, one) == 1.0
    assert changed_outside_share(original, output, both) == 0.0


def test_jpeg_re_encoding_noise_is_not_counted_as_changed():
    source = decode_image(_jpeg(photo_like()))  # the original photo, a JPEG itself
    original = source.rgb
    region = [face_region(square_landmarks(), original.shape)]
    re_encoded = decode_image(encode_image(source, original, jpeg_quality=95)).rgb  # what a run writes, untouched
    assert np.abs(original.astype(int) - re_encoded).max() > 0  # the pixels did move
    assert count_changes(original, re_encoded, region).changed / original[..., 0].size < 0.001  # but (almost) none counts
    assert count_changes(original, re_encoded, region, threshold=2).changed / original[..., 0].size > 0.01  # a lower threshold would
    # a face change written as JPEG: the noise around it does not show up as changes outside the face
    hull = np.zeros(original.shape[:2], bool)
    hull[150:251, 150:251] = True
    changed = original.copy()
    changed[hull] = 255 - original[hull]  # the face itself, inverted
    written = decode_image(encode_image(source, changed, jpeg_quality=95)).rgb
    count = count_changes(original, written, region)
    assert count.changed > 5000 and count.share is not None and count.share < 0.01
    assert CHANGE_THRESHOLD == 8


def test_sharpness_of_a_blurred_face_falls_and_of_an_identical_face_stays():
    original = photo_like()
    mask = face_region(square_landmarks(), original.shape)
    assert sharpness_ratio(original, original.copy(), mask) == 1.0
    blurred = original.copy()
    blurred[mask] = cv2.GaussianBlur(original, (0, 0), 4)[mask]
    ratio = sharpness_ratio(original, blurred, mask)
    assert ratio is not None and ratio < 0.2
    assert laplacian_sharpness(original, np.zeros_like(mask)) is None
    flat = np.full_like(original, 128)
    assert sharpness_ratio(flat, original, mask) is None  # nothing to compare against: no ratio


def _jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])[1].tobytes()


def test_on_celeba_photos_blur_changes_mostly_the_face_and_a_square_paste_does_not(shared_dir, tiny_env, tmp_path):
    """Three real photos through `anonymize run --method blur --aligned`: the blur's changes lie mostly inside
    the faces dlib finds on the originals and its faces lose most of their detail; pasting the centre square of
    another photo over the same faces (what a whole-crop paste does) counts far more pixels outside."""
    photos = copy_celeba_ids(shared_dir, tmp_path / "celeba", identities=("0", "1", "2"), per_identity=1)
    out = tmp_path / "out"
    result = cli("run", photos, "--out", out, "--method", "blur", "--aligned", "--quiet")
    assert result.exit_code == 0, result.output
    landmarker = FaceLandmarker(tiny_env.store())
    paths = sorted(photos.rglob("*.jpg"))
    originals = [decode_image(path).rgb for path in paths]
    blur_total = paste_total = None
    for index, (path, original) in enumerate(zip(paths, originals)):
        faces = landmarker(original)
        assert len(faces) == 1, path
        source = decode_image(path)
        re_encoded = decode_image(encode_image(source, source.rgb, jpeg_quality=95)).rgb  # an untouched photo, written again
        assert count_changes(original, re_encoded, []).changed < 0.001 * original[..., 0].size
        mask = faces_mask(faces, original.shape)
        output = decode_image(out / path.relative_to(photos)).rgb
        blurred = count_changes(original, output, mask)
        ratio = sharpness_ratio(original, output, mask)
        assert ratio is not None and ratio < 0.5, (path, ratio)
        pasted = original.copy()
        other = originals[(index + 1) % len(originals)]
        pasted[45:205, 9:169] = other[45:205, 9:169]  # a 160 px square about the face of a 178 x 218 photo
        square = count_changes(original, pasted, mask)
        blur_total = blurred if blur_total is None else blur_total + blurred
        paste_total = square if paste_total is None else paste_total + square
    assert blur_total is not None and paste_total is not None
    assert blur_total.share is not None and blur_total.share < 0.3
    assert paste_total.share is not None and paste_total.share > 0.4 and paste_total.share > 2 * blur_total.share

"""k-Same in a shape-free space: warps that keep the landmarks, one sharp face per group, blending along the face.

Real CelebA photos aligned to FFHQ crops, dlib's real 68-point predictor: the geometry is checked
where it matters, on faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anonymize.faces.align import align_single_face
from anonymize.faces.blend import blend, face_region_mask, laplacian_variance, match_colour
from anonymize.faces.landmarks import LandmarkFinder
from anonymize.faces.shape_warp import backward_map, border_ring, warp_to_shape
from anonymize.faces.types import FaceCrop
from anonymize.io.decode import decode_image
from anonymize.io.storage import plan_storage, work_storage
from anonymize.methods.base import MethodContext, MethodError
from anonymize.methods.ksame.method import KSameMethod
from anonymize.methods.ksame.shapefree import group_shapes, member_output, shapefree_faces, weighted_average
from anonymize.metrics.appearance import ChangeCount, FaceLandmarker, count_changes, faces_mask, sharpness_ratio
from anonymize.weights import WeightsStore
from tests.helpers import cli, copy_celeba_ids

SIZE = 256
PEOPLE = ("0", "1", "2", "3", "4")


@pytest.fixture(scope="module")
def finder() -> LandmarkFinder:
    return LandmarkFinder(WeightsStore(None))


@pytest.fixture(scope="module")
def faces(shared_dir: Path, finder: LandmarkFinder) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(person, 256 px aligned crop, its 68 landmarks): two photos of each of the five celeba-ids people."""
    found = []
    for person in PEOPLE:
        for photo in sorted((shared_dir / "data" / "celeba-ids" / person).glob("*.jpg"))[:2]:
            crop = align_single_face(np.asarray(Image.open(photo).convert("RGB")), None, SIZE).crop
            found.append((person, crop, finder(crop)))
    return found


def sample(map_x: np.ndarray, map_y: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear lookup of two backward maps at points: where each point reads from."""
    x, y = points[:, 0], points[:, 1]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0

    def at(grid: np.ndarray) -> np.ndarray:
        return ((1 - fx) * (1 - fy) * grid[y0, x0] + fx * (1 - fy) * grid[y0, x0 + 1]
                + (1 - fx) * fy * grid[y0 + 1, x0] + fx * fy * grid[y0 + 1, x0 + 1])

    return np.column_stack([at(map_x), at(map_y)])


# ---- the warp ----------------------------------------------------------------------------------------

def test_a_face_warped_to_the_mean_shape_and_back_returns_within_a_pixel_at_its_landmarks(faces):
    shapes = np.stack([shape for _, _, shape in faces])
    mean = shapes.mean(axis=0)
    for _, _, shape in faces:
        to_mean = backward_map(shape, mean, SIZE, SIZE)  # mean-shape pixels read from the face
        back = backward_map(mean, shape, SIZE, SIZE)  # face-shape pixels read from the mean-shape image
        # landmark p of the round trip reads the mean-shape image at back(p), which reads the face at to_mean(back(p))
        via_mean = sample(*back, shape)
        returned = sample(*to_mean, via_mean)
        # each landmark the warp holds (all but the inner lips, which follow the outer ones) reads from its
        # place in the mean shape, and there and back returns within a pixel
        assert np.abs(via_mean - mean)[:60].max() < 0.5
        errors = np.linalg.norm(returned - shape, axis=1)
        print(f"round trip: held landmarks {errors[:60].max():.2f} px, inner lips {errors[60:].max():.2f} px")
        assert errors[:60].max() < 1.0


def test_dlib_finds_a_warped_face_s_landmarks_where_the_warp_put_them(faces, finder):
    (_, crop, shape), (_, _, other) = faces[0], faces[2]
    warped = warp_to_shape(crop, shape, other)
    moved = np.linalg.norm(other - shape, axis=1).mean()
    error = np.linalg.norm(finder(warped) - other, axis=1).mean()
    assert moved > 4 and error < 0.5 * moved  # the features moved, and dlib sees them at their new place


def test_the_warp_never_moves_the_image_border():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    source = np.array([[20.0, 20.0], [40.0, 22.0], [32.0, 40.0]])
    warped = warp_to_shape(image, source, source + [[3.0, -2.0], [-2.0, 3.0], [1.0, 4.0]])
    assert np.array_equal(warped[0], image[0]) and np.array_equal(warped[:, -1], image[:, -1])
    assert len(border_ring(64, 64)) == 16


# ---- the group face ----------------------------------------------------------------------------------

def test_a_group_s_face_has_its_features_where_the_group_s_mean_shape_has_them(faces, finder):
    """No doubled features: dlib's landmarks on the shape-free average sit on the mean shape, unlike the
    pixel average's (whose eyes and mouths are each member's, superposed)."""
    members = [0, 2, 4, 6, 8]  # one photo of each person
    crops = np.stack([crop for _, crop, _ in faces])
    shapes = np.stack([shape for _, _, shape in faces])
    [mean_shape] = group_shapes(shapes, [members])
    [face] = shapefree_faces(crops, shapes, [members])
    pixel = np.rint(crops[members].astype(float).mean(axis=0)).astype(np.uint8)
    shapefree_error = np.linalg.norm(finder(face) - mean_shape, axis=1).mean()
    pixel_error = np.linalg.norm(finder(pixel) - mean_shape, axis=1).mean()
    print(f"landmarks vs the mean shape: shape-free {shapefree_error:.2f} px, pixel average {pixel_error:.2f} px")
    assert shapefree_error < 2.5
    region = face_region_mask(mean_shape, SIZE) > 0.5
    members_detail = np.mean([laplacian_variance(crops[i], region) for i in members])
    assert laplacian_variance(face, region) >= 0.5 * members_detail  # re-sharpened: not a soft ghost


def test_the_same_group_face_lands_in_every_member_and_nothing_outside_the_face_changes(faces):
    members = [1, 3, 5, 7, 9]
    crops = np.stack([crop for _, crop, _ in faces])
    shapes = np.stack([shape for _, _, shape in faces])
    [mean_shape] = group_shapes(shapes, [members])
    [face] = shapefree_faces(crops, shapes, [members])
    core = face_region_mask(mean_shape, SIZE) >= 1.0
    for i in members:
        kept = member_output(face, mean_shape, crops[i], shapes[i], shape="group", match="none")
        assert np.array_equal(kept.crop[core], face[core])  # identical in the shape-free space
        untouched = kept.mask == 0
        assert untouched.mean() > 0.15 and np.array_equal(kept.crop[untouched], crops[i][untouched])
        # match=photo: the group's face in the member's skin tone (each channel's mean inside the face is the
        # member's) and detail (sharpened as much as the member's photo is sharp); still the same face
        matched = member_output(face, mean_shape, crops[i], shapes[i], shape="group", match="photo").crop
        own = face_region_mask(shapes[i], SIZE) > 0.5
        region = face_region_mask(mean_shape, SIZE) > 0.5
        assert np.abs(matched[region].mean(axis=0) - crops[i][own].mean(axis=0)).max() < 6
        for channel in range(3):
            assert np.corrcoef(face[core][:, channel], matched[core][:, channel])[0, 1] > 0.9
        # shape=target: the face warped to the member's landmarks, and back it is the group's face again
        fitted = member_output(face, mean_shape, crops[i], shapes[i], shape="target", match="none").crop
        back = warp_to_shape(fitted, shapes[i], mean_shape)
        inner = face_region_mask(mean_shape, SIZE, scale=0.8) >= 1.0
        assert np.abs(back[inner].astype(int) - face[inner].astype(int)).mean() < 4


def test_colour_matching_moves_each_channel_s_mean_and_spread_to_the_target_s():
    rng = np.random.default_rng(3)
    face = rng.normal(120, 20, (32, 32, 3)).clip(0, 255).astype(np.uint8)
    target = rng.normal([180, 140, 110], [10, 15, 12], (32, 32, 3)).clip(0, 255).astype(np.uint8)
    everywhere = np.ones((32, 32), bool)
    matched = match_colour(face, everywhere, target, everywhere)
    assert np.allclose(matched.reshape(-1, 3).mean(axis=0), target.reshape(-1, 3).mean(axis=0), atol=1.0)
    assert np.allclose(matched.reshape(-1, 3).std(axis=0), target.reshape(-1, 3).std(axis=0), rtol=0.05)
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1.0
    blended = blend(target, matched, mask)
    assert np.array_equal(blended[mask == 0], target[mask == 0])


# ---- the method --------------------------------------------------------------------------------------

def test_the_method_gives_each_member_the_group_face_and_a_face_mask_for_the_paste_back(faces, tmp_path):
    context = MethodContext(WeightsStore(None), plan=plan_storage(tmp_path, "ksame"), work=work_storage(tmp_path),
                            identity_from="folder")
    method = KSameMethod(context, {"k": "5", "match": "none"})
    assert method.params.space == "shapefree"  # the default
    crops = [FaceCrop(crop, None, f"{person}/{i}.jpg#0") for i, (person, crop, _) in enumerate(faces)]
    method.survey(crops[:6])
    method.survey(crops[6:])
    assert method.plan()["groups"] == 2
    results = method.anonymize(crops)
    stored = np.load(next((tmp_path / ".anonymize" / "plan" / "ksame").glob("group-faces-*.npy")))
    for crop, result in zip(crops, results):
        group = result.metrics["ksame_group"]
        assert result.metrics["ksame_space"] == "shapefree" and result.mask is not None
        core = result.mask >= 1.0
        assert np.array_equal(result.crop[core], stored[group][core])
        assert np.array_equal(result.crop[result.mask == 0], crop.image[result.mask == 0])
    # a copy that did not plan (a Ray actor, a resumed run) reads the stored plan, shapes included
    copy = KSameMethod(context, {"k": "5", "match": "none"})
    assert all(np.array_equal(a.crop, b.crop) for a, b in zip(copy.anonymize(crops), results))


def test_shape_free_options_are_checked():
    with pytest.raises(MethodError, match="shape must be one of group, target"):
        KSameMethod(MethodContext(WeightsStore(None)), {"shape": "mean"})
    with pytest.raises(MethodError, match="match must be one of photo, none"):
        KSameMethod(MethodContext(WeightsStore(None)), {"match": "colour"})


def test_written_photos_change_the_faces_only_and_keep_them_sharp_unlike_the_pixel_space_square(shared_dir, tmp_path):
    """Eight CelebA photos (four people) through `anonymize run --method ksame -p k=2`: the shape-free default
    changes pixels inside the faces (dlib's 68-landmark hull x 1.4 on the originals) and keeps them sharp;
    the pixel space pastes the group's whole square (others' hair and backgrounds) and a ghost."""
    photos = copy_celeba_ids(shared_dir, tmp_path / "in", identities=("0", "1", "2", "3"), per_identity=2)
    landmarker = FaceLandmarker(WeightsStore(None))
    paths = sorted(photos.rglob("*.jpg"))
    originals = [decode_image(path).rgb for path in paths]
    masks = [faces_mask(landmarker(original), original.shape) for original in originals]
    figures = {}
    for space in ("shapefree", "pixel"):
        out = tmp_path / space
        result = cli("run", photos, "--out", out, "--method", "ksame", "-p", "k=2", "-p", f"space={space}", "--aligned",
                     "--identity-from", "folder", "--quiet")
        assert result.exit_code == 0, result.output
        outputs = [decode_image(out / path.relative_to(photos)).rgb for path in paths]
        changes = sum((count_changes(a, b, m) for a, b, m in zip(originals, outputs, masks)), ChangeCount(0, 0))
        sharpness = np.mean([sharpness_ratio(a, b, m) for a, b, m in zip(originals, outputs, masks)])
        figures[space] = (changes.share, sharpness)
    print(f"changed outside the face, sharpness: {figures}")
    assert figures["shapefree"][0] < 0.2 < figures["pixel"][0]
    assert figures["shapefree"][1] > max(0.4, 2 * figures["pixel"][1])  # README: 0.5 or more on all 150 photos


def test_the_average_leaves_out_what_one_member_alone_has_and_where_a_member_is_stretched():
    """Five flat faces of grey 120-140; one wears 'sunglasses' (a black band): the plain mean shows a dark
    band at 1/5 of the way to black, the group's average hardly any. A member stretched over one half
    (its density 0.3 there) counts less there."""
    stack = np.stack([np.full((64, 64, 3), 120.0 + 5 * i) for i in range(5)])
    stack[4, 16:40] = 0.0  # the band
    flat = np.ones((5, 64, 64), np.float32)
    average = weighted_average(stack, flat)
    plain = stack.mean(axis=0)
    assert 130 - plain[28, 32, 0] > 20  # the ghost band of the plain mean
    assert 130 - average[28, 32, 0] < 6 and abs(average[56, 32, 0] - 130) < 1
    stretched = flat.copy()
    stretched[0, :, 32:] = 0.3  # member 0 (grey 120) stretched over the right half
    shifted = weighted_average(stack, stretched)
    assert shifted[56, 56, 0] > average[56, 56, 0] + 1 and abs(shifted[56, 8, 0] - average[56, 8, 0]) < 0.5


def test_the_run_summary_says_what_the_shape_free_face_leaves_to_recognisers():
    from anonymize.run.pipeline import Pipeline

    note = Pipeline.privacy_note(KSameMethod(MethodContext(WeightsStore(None)), {}))
    assert note is not None and "1/k bound covers the replaced face" in note and "region_scale" in note
    assert Pipeline.privacy_note(KSameMethod(MethodContext(WeightsStore(None)), {"space": "pixel"})) is None

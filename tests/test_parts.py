"""`--method parts` (adaptive facial-attribute obfuscation): parts, exact relevance, the warp backend.

The warp backend runs here on real photos with real dlib weights (../shared/data/celeba-ids); the
latent backend on the tiny networks (tests/test_parts_latent.py).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from anonymize.metrics.quality import ssim
from anonymize.faces.align import align_single_face
from anonymize.methods.base import MethodContext, MethodError
from anonymize.methods.parts.identity import DlibIdentity, layer_identity_loss
from anonymize.faces.landmarks import LandmarkFinder, inter_ocular, shape_predictor
from anonymize.methods.parts.masks import PARTS, parse_parts, part_masks, union_mask
from anonymize.methods.parts.method import Candidate, PartsMethod, candidate_parts, select_candidate
from anonymize.methods.parts.relevance import decompose_arcface, decompose_dlib, part_relevance, rank_parts
from anonymize.methods.parts import warp
from anonymize.methods.parts.warp import MOVED_LANDMARKS, PgdSettings, identity_pgd, target_landmarks, warp_maps, warp_parts
from anonymize.metrics.identity import DlibRecogniser, distance, dlib_face_network
from anonymize.models.images import CanonicalImages
from anonymize.models.registry import load_arcface_model
from anonymize.weights import WeightsStore

# The real-photo test's faces: the first two photos of each of the five identities.
FACES_PER_ID = 2
# A face region whose mean SSIM to the original stays above this did not visibly change.
FACE_SSIM_BELOW = 0.9


def aligned_crop(path: Path) -> np.ndarray:
    return align_single_face(np.asarray(Image.open(path).convert("RGB")), None, 256).crop


@pytest.fixture(scope="module")
def store() -> WeightsStore:
    return WeightsStore()  # dlib's models come from the installed face_recognition_models package


@pytest.fixture(scope="module")
def crops(shared_dir: Path) -> list[np.ndarray]:
    folders = sorted((shared_dir / "data" / "celeba-ids").iterdir())
    return [aligned_crop(photo) for folder in folders for photo in sorted(folder.glob("*.jpg"))[:FACES_PER_ID]]


@pytest.fixture(scope="module")
def finder(store: WeightsStore) -> LandmarkFinder:
    return LandmarkFinder(store)


@pytest.fixture(scope="module")
def dlib_identity(store: WeightsStore, finder: LandmarkFinder) -> DlibIdentity:
    network = dlib_face_network(store.require("dlib_face_recognition_resnet"), "cpu")
    return DlibIdentity(network, shape_predictor(store.require("dlib_shape_predictor_5")), finder, tau=0.5)


# -- relevance: an exact split of the embedding's norm -------------------------------------------------


def test_the_arcface_relevance_map_and_its_constant_add_up_to_the_embedding_norm(tiny_weights):
    arcface = load_arcface_model(tiny_weights.store())
    images = CanonicalImages(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    parts = decompose_arcface(arcface, images)
    assert torch.allclose(parts.relevance.sum(dim=(1, 2)) + parts.constant, parts.norm, rtol=1e-5)
    # ... and the embedding it decomposes is ArcFace's own, before the L2 normalisation.
    assert torch.allclose(torch.nn.functional.normalize(parts.embedding, dim=1), arcface(images), atol=1e-5)


def test_the_dlib_relevance_map_adds_up_to_the_descriptor_norm(dlib_identity, crops):
    reference = dlib_identity.reference(crops[0])
    chips = dlib_identity.chips(torch.from_numpy(crops[0]).permute(2, 0, 1).float()[None], reference)
    parts = decompose_dlib(dlib_identity.network, chips)
    assert torch.allclose(parts.relevance.sum(dim=(1, 2)) + parts.constant, parts.norm, rtol=1e-5)
    assert torch.allclose(parts.embedding, dlib_identity.network(chips), atol=1e-5)


def test_part_relevance_is_the_mask_weighted_mean_and_parts_rank_lowest_first():
    crop_map = np.zeros((4, 4), np.float32)
    crop_map[0, :] = 1.0
    crop_map[3, :] = 3.0
    crop_map[1, 0] = np.nan  # not seen by the recogniser: left out of the mean
    masks = {"nose": np.zeros((4, 4), np.float32), "lips": np.zeros((4, 4), np.float32)}
    masks["nose"][0, :2], masks["nose"][1, :2] = 1.0, 1.0  # (1 + 1 + 0) / 3 seen
    masks["lips"][3, :] = 0.5
    scores = part_relevance(crop_map, masks)
    assert scores == pytest.approx({"nose": 2 / 3, "lips": 3.0})
    assert rank_parts({"lips": 3.0, "eyes": float("nan"), "nose": 2 / 3}) == ["nose", "lips", "eyes"]


# -- parts and masks -------------------------------------------------------------------------------------


def test_parts_options_are_checked():
    assert parse_parts("nose, lips,nose") == ("nose", "lips")
    with pytest.raises(ValueError, match="unknown part"):
        parse_parts("nose,ears")
    with pytest.raises(MethodError, match="backend"):
        PartsMethod(MethodContext(WeightsStore()), {"backend": "gan"})


def test_each_part_mask_is_one_on_its_landmarks_and_zero_far_from_them(finder, crops):
    landmarks = finder(crops[0])
    masks = part_masks(landmarks, 256)
    for part, mask in masks.items():
        assert mask.min() == 0.0 and mask.max() == pytest.approx(1.0)
    nose_tip, chin = np.round(landmarks[30]).astype(int), np.round(landmarks[8]).astype(int)
    assert masks["nose"][nose_tip[1], nose_tip[0]] == pytest.approx(1.0)
    assert all(mask[chin[1], chin[0]] == 0.0 for mask in masks.values())


# -- the warp backend ------------------------------------------------------------------------------------


def test_a_warp_changes_only_the_chosen_parts_and_enlarges_the_nose(finder, crops):
    crop = crops[0]
    landmarks = finder(crop)
    warped = warp_parts(crop, landmarks, ("nose",))
    outside = part_masks(landmarks, 256, ("nose",))["nose"] == 0
    assert np.array_equal(warped[outside], crop[outside])
    assert np.abs(warped.astype(int) - crop).max() > 30
    # The nose is wider: dlib's landmarks on the warped face put the nostrils further apart.
    width = lambda points: points[35, 0] - points[31, 0]  # noqa: E731
    assert width(finder(warped)) > width(landmarks) * 1.08


@pytest.mark.parametrize("parts", [PARTS, ("eyebrows",), ("eyes", "lips")])
def test_pixels_outside_the_chosen_masks_stay_bit_identical_and_the_warp_has_no_seam(finder, crops, parts):
    for crop in crops[::3]:
        landmarks = finder(crop)
        mask = union_mask(list(part_masks(landmarks, 256, parts).values()))
        warped = warp_parts(crop, landmarks, parts)
        assert np.array_equal(warped[mask == 0], crop[mask == 0])
        # Inside, the warp fades to the identity at the masks' outline: no step where the copy begins.
        map_x, map_y, moved = warp_maps(landmarks, parts, 256)
        ys, xs = np.mgrid[0:256, 0:256]
        shift = np.hypot(map_x - xs, map_y - ys)
        inside = (mask > 0).astype(np.uint8)
        rim = inside.astype(bool) & ~cv2.erode(inside, np.ones((3, 3), np.uint8)).astype(bool)
        assert shift[rim].max() < 0.5 and not moved[mask == 0].any()
        assert shift.max() > 2.0


def test_the_warp_neither_folds_nor_crushes_the_face(finder, crops):
    """The backward map's Jacobian determinant (area ratio) stays well inside (0, inf): no triangle is
    flipped (a fold would duplicate texture) or squashed (a smear)."""
    for crop in crops:
        map_x, map_y, moved = warp_maps(finder(crop), PARTS, 256)
        determinant = np.gradient(map_x, axis=1) * np.gradient(map_y, axis=0) - np.gradient(map_x, axis=0) * np.gradient(map_y, axis=1)
        assert 0.3 < determinant[moved].min() and determinant[moved].max() < 3.0


def _dots(points: np.ndarray, size: int = 256) -> np.ndarray:
    """A black size x size grey image with a small white disc at each point (placed to 1/16 px)."""
    image = np.zeros((size, size), np.uint8)
    for x, y in points:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 24, 255, -1, cv2.LINE_AA, shift=4)
    return image


def _centroid(image: np.ndarray, around: np.ndarray, radius: int = 3) -> np.ndarray:
    x0, y0 = np.round(around).astype(int)
    window = image[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1].astype(float)
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()


@pytest.mark.parametrize("part, indices", [("nose", (31, 33, 35)), ("lips", (48, 51, 54, 57))])
def test_the_nose_and_lip_landmarks_land_where_the_edit_puts_them(finder, crops, part, indices):
    """Dots drawn at the landmarks are found, after the warp, within 1 px of their targets; and the
    targets are the edit: nostrils 20% further apart; lips 25% taller and wider."""
    landmarks = finder(crops[0])
    targets = target_landmarks(landmarks, (part,))
    picture = _dots(landmarks[list(indices)])
    warped = warp_parts(np.dstack([picture] * 3), landmarks, (part,))[..., 0]
    moves = []
    for index in indices:
        drawn, found = _centroid(picture, landmarks[index]), _centroid(warped, targets[index])
        assert np.linalg.norm((found - targets[index]) - (drawn - landmarks[index])) < 1.0, index
        moves.append(np.linalg.norm(found - drawn))
    assert min(moves) > 0.5 and max(moves) > 2.0  # ... and they did move
    apart = lambda points, a, b: float(np.linalg.norm(points[a] - points[b]))  # noqa: E731
    if part == "nose":
        assert apart(targets, 31, 35) == pytest.approx(apart(landmarks, 31, 35) * warp.NOSE_WIDTH, rel=0.05)
    else:
        assert apart(targets, 51, 57) == pytest.approx(apart(landmarks, 51, 57) * warp.LIPS_SCALE[1], rel=0.05)
        assert apart(targets, 48, 54) == pytest.approx(apart(landmarks, 48, 54) * warp.LIPS_SCALE[0], rel=0.05)
    assert np.array_equal(np.delete(targets, MOVED_LANDMARKS[part], axis=0), np.delete(landmarks, MOVED_LANDMARKS[part], axis=0))


def _feature(landmarks: np.ndarray, part: str, thickness: int) -> np.ndarray:
    """Boolean mask of a drawn feature: each brow a stroke along its landmarks, or the lips filled."""
    canvas = np.zeros((256, 256), np.uint8)
    if part == "eyebrows":
        for group in (landmarks[17:22], landmarks[22:27]):
            cv2.polylines(canvas, [np.round(group * 16).astype(np.int32)], False, 1, thickness, cv2.LINE_8, shift=4)
    else:
        cv2.fillPoly(canvas, [np.round(landmarks[48:60] * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return canvas.astype(bool)


NEIGHBOUR = {"eyebrows": (36, 42), "lips": (31, 36)}  # the landmarks outlining the feature next door (an eye, the nostrils)


@pytest.mark.parametrize("part", ["eyebrows", "lips"])
def test_a_feature_moves_whole_and_nothing_from_around_it_is_sampled_into_it(finder, crops, part):
    """A synthetic face: the feature (each brow a 5 px stroke along its landmarks; the lips filled) in
    one colour, the feature next door (an eye; the nostrils) in a second, all else a third. After the
    warp the feature drawn at its moved landmarks shows no other colour (nothing dragged in from across
    its outline), no feature colour is left more than a few pixels away from it (no smear; the brows
    may thicken by their lift's difference), and the neighbour has not moved."""
    landmarks = finder(crops[1])
    feature, neighbour, around = np.array([90, 50, 30]), np.array([20, 40, 200]), np.array([60, 200, 60])
    start, stop = NEIGHBOUR[part]
    next_door = np.zeros((256, 256), np.uint8)
    cv2.fillPoly(next_door, [np.round(landmarks[start:stop] * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    crop = np.where(_feature(landmarks, part, 5)[..., None], feature, np.where(next_door[..., None] > 0, neighbour, around))
    warped = warp_parts(crop.astype(np.uint8), landmarks, (part,)).astype(int)
    moved = target_landmarks(landmarks, (part,))
    core = _feature(moved, part, 1)
    if part == "lips":
        core = cv2.erode(core.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    grow = 2 + (int(np.ceil((warp.BROW_LIFT - warp.BROW_LOWER_LIFT) * inter_ocular(landmarks))) if part == "eyebrows" else 0)
    reach = cv2.dilate(_feature(moved, part, 5).astype(np.uint8), np.ones((2 * grow + 1,) * 2, np.uint8)).astype(bool)
    coloured = lambda colour: np.abs(warped - colour).sum(axis=2) < 60  # noqa: E731
    assert (coloured(feature) | ~core).all(), "another colour sampled into the feature"
    assert not coloured(feature)[~reach].any(), "feature colour smeared away from the feature"
    assert (core & ~_feature(landmarks, part, 1)).any()  # the feature did move
    inner = cv2.erode(next_door, np.ones((3, 3), np.uint8)).astype(bool)
    outer = cv2.dilate(next_door, np.ones((3, 3), np.uint8)).astype(bool)
    assert coloured(neighbour)[inner].all() and not coloured(neighbour)[~outer].any(), "the feature next door moved"


def test_pgd_pulls_the_identity_back_within_its_bound_and_inside_the_masks(dlib_identity, finder, crops):
    crop = crops[1]
    landmarks = finder(crop)
    reference = dlib_identity.reference(crop)
    parts = ("eyes", "nose", "lips")
    start = torch.from_numpy(warp_parts(crop, landmarks, parts)).permute(2, 0, 1).float()[None]
    mask = torch.from_numpy(union_mask(list(part_masks(landmarks, 256, parts).values())))[None, None]
    with torch.no_grad():
        before = dlib_identity.score(dlib_identity.embed(start, reference), reference)
    tight = DlibIdentity(dlib_identity.network, dlib_identity.predictor5, finder, tau=float(before) / 2)
    result = identity_pgd(start, mask, tight, reference, PgdSettings(steps=3, eps=6.0, step_size=2.0))
    assert float(result.score) < float(before) * 0.9
    change = result.images - start
    assert change.abs().max() <= 6.0 + 0.5  # the bound, plus the final rounding to integers
    assert torch.equal(change[(mask == 0).expand_as(change)], torch.zeros(int((mask == 0).sum()) * 3))


def test_the_pgd_leaves_a_face_that_already_passes_untouched(dlib_identity, crops):
    reference = dlib_identity.reference(crops[2])
    image = torch.from_numpy(crops[2]).permute(2, 0, 1).float()[None]
    result = identity_pgd(image, torch.ones(1, 1, 256, 256), dlib_identity, reference, PgdSettings(steps=5))
    assert result.steps_taken == 0 and torch.equal(result.images, image)


def test_adaptive_selection_takes_the_most_parts_that_pass_and_the_fewest_when_none_does():
    image = np.zeros((2, 2, 3), np.uint8)
    make = lambda parts, ok: Candidate(parts, image, 0.0, ok)  # noqa: E731
    assert select_candidate([make(("a",), True), make(("a", "b"), True), make(("a", "b", "c"), False)]).parts == ("a", "b")
    assert select_candidate([make(("a", "b"), False), make(("a",), False)]).parts == ("a",)


def test_k_fixes_how_many_of_the_least_relevant_parts_change_and_adaptive_stays_the_default():
    ranking = ("lips", "eyebrows", "nose", "eyes")  # least identity-relevant first
    assert candidate_parts(ranking) == [("lips",), ("lips", "eyebrows"), ("lips", "eyebrows", "nose"), ranking]
    assert candidate_parts(ranking, k=2) == [("lips", "eyebrows")]
    assert candidate_parts(ranking, fixed=("nose",)) == [("nose",)]
    assert PartsMethod.Params().k == 0
    for options, message in (({"k": "5"}, "k must be 1..4"), ({"k": "2", "parts": "nose"}, "either k"),
                             ({"identity": "cosine"}, "identity must be"), ({"backend": "warp", "paste": "face"}, "paste=face needs")):
        with pytest.raises(MethodError, match=message):
            PartsMethod(MethodContext(WeightsStore()), options)


def test_both_backends_move_each_part_toward_the_attribute_the_paper_names(finder, crops):
    """One reading of "obfuscate": the paper's indicator sets Bushy Eyebrows, Narrow Eyes, Big Nose, Big Lips;
    the latent backend's text targets are those prompts (tests/test_parts_text.py), and the warp moves that way."""
    from anonymize.methods.parts.attributes import ATTRIBUTES

    assert [ATTRIBUTES[part][0] for part in ("eyebrows", "eyes", "nose", "lips")] == \
        ["bushy eyebrows", "narrow eyes", "a big nose", "big lips"]
    landmarks = finder(crops[0])
    moved = target_landmarks(landmarks, PARTS)
    apart = lambda points, i, j: float(np.linalg.norm(points[i] - points[j]))  # noqa: E731
    assert apart(moved, 37, 41) < apart(landmarks, 37, 41) and apart(moved, 44, 46) < apart(landmarks, 44, 46)  # narrower eyes
    assert apart(moved, 31, 35) > apart(landmarks, 31, 35)  # a bigger nose
    assert apart(moved, 51, 57) > apart(landmarks, 51, 57) and apart(moved, 48, 54) > apart(landmarks, 48, 54)  # bigger lips
    assert all(moved[i, 1] < landmarks[i, 1] for i in range(17, 27))  # brows raised and thickened (upper edge lifted most)


def test_eq7_identity_loss_sums_each_layers_l2_distance_relative_to_the_originals_norm():
    """Hand-computed: layer A, original (1, 0, 0, 0) (norm 1); layer B, original (0, 0, 0, 6) (norm 6).
    Image 0 equals A and is all zero in B: 0 / 1 + 6 / 6 = 1. Image 1 is (1, 3, 4, 0) in A and equals B:
    5 / 1 + 0 / 6 = 5."""
    reference = [torch.tensor([[1.0, 0, 0, 0]]).reshape(1, 1, 2, 2), torch.tensor([[0.0, 0, 0, 6]])]
    features = [torch.tensor([[1.0, 0, 0, 0], [1, 3, 4, 0]]).reshape(2, 1, 2, 2), torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 6]])]
    assert layer_identity_loss(features, reference).tolist() == pytest.approx([1.0, 5.0])


def test_real_photos_keep_matching_their_originals_while_the_face_region_changes(store, crops):
    """The warp of all four parts, no recogniser in the loop (pgd_steps=0, fixed parts), judged by dlib's
    C++ recogniser on its own chips: dlib is held out. Then the adaptive run, PGD on dlib's PyTorch
    network: the same judge, no longer held out (the only real recogniser the test machine has)."""
    judge = DlibRecogniser(store, backend="dlib")
    finder = LandmarkFinder(store)
    context = MethodContext(store)
    runs = {  # the adaptive run (PGD on four candidates) on one photo per person, to keep the test short
        "held_out": (PartsMethod(context, {"backend": "warp", "parts": ",".join(PARTS), "pgd_steps": "0"}), crops),
        "adaptive": (PartsMethod(context, {"backend": "warp", "dlib_tau": "0.3", "pgd_steps": "5"}), crops[::FACES_PER_ID]),
    }
    for name, (method, faces) in runs.items():
        matched, similarity = [], []
        for crop in faces:
            output = method.anonymize_one(_face(crop)).crop
            rect = finder.face_rect(crop)
            box = [(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)]
            matched.append(distance(judge.descriptors(crop, box)[0], judge.descriptors(output, box)[0]) < 0.6)
            region = np.zeros((256, 256), np.uint8)
            cv2.fillConvexPoly(region, cv2.convexHull(np.round(finder(crop)).astype(np.int32)), 1)
            similarity.append(ssim(crop, output, region.astype(bool)))
        assert np.mean(matched) >= 0.9, (name, matched)
        assert np.mean(similarity) < FACE_SSIM_BELOW, (name, similarity)


def _face(crop: np.ndarray):
    from anonymize.faces.types import FaceCrop

    return FaceCrop(crop, None, "test#0")

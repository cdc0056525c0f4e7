"""FID's Inception-v3: the published pytorch-fid layout, strict loading, 2048-d features (random weights, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from anonymize.models.checkpoint import CheckpointError
from anonymize.models.images import CanonicalImages
from anonymize.models.inception import FEATURE_DIM, FidInceptionV3
from anonymize.models.legacy.inception import load_fid_inception
from anonymize.weights import read_lock

REPO_LOCK = Path(__file__).resolve().parents[1] / "weights.lock"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random network saved as a bare state dict, as pytorch-fid publishes its file."""
    torch.manual_seed(0)
    network = FidInceptionV3()
    for module in network.modules():  # non-trivial statistics, so loading them visibly matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), path)
    return path


def test_the_layout_is_torchvisions_inception_v3_without_aux_head_and_with_1008_classes():
    ours = {key: tuple(value.shape) for key, value in FidInceptionV3().state_dict().items()}
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    assert ours == {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert ours["fc.weight"] == (1008, 2048) and "Mixed_7c.branch3x3dbl_3b.bn.num_batches_tracked" in ours


def test_a_saved_state_dict_loads_strictly_and_gives_2048_features_per_image(checkpoint):
    model = load_fid_inception(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)
    assert torch.equal(model.Mixed_6e.branch_pool.bn.running_var, saved["Mixed_6e.branch_pool.bn.running_var"])
    torch.manual_seed(1)
    ramp = torch.linspace(-1, 1, 178).expand(3, 218, 178)
    images = CanonicalImages(torch.stack([ramp, torch.rand(3, 218, 178) * 2 - 1, -ramp.flip(2) * 0.3]))  # CelebA size, resized inside
    with torch.inference_mode():
        batch = model(images)
        alone = model(CanonicalImages(images.tensor[1:2]))
    assert batch.shape == (3, FEATURE_DIM) and torch.isfinite(batch).all()
    assert torch.allclose(batch[1:2], alone, atol=1e-4)  # evaluation mode: no batch statistics
    assert not torch.allclose(batch[0], batch[2])
    model.train()
    assert not model.training


def test_files_from_before_batchnorm_counters_load_and_wrong_layouts_are_refused(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    old = tmp_path / "old.pth"
    torch.save({key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}, old)
    load_fid_inception(old)
    torchvision_layout = tmp_path / "torchvision.pth"
    torch.save({**state, "AuxLogits.fc.weight": torch.zeros(1008, 768)}, torchvision_layout)
    with pytest.raises(CheckpointError, match="unexpected keys: AuxLogits.fc.weight"):
        load_fid_inception(torchvision_layout)


def test_the_lock_pins_the_pytorch_fid_file_by_its_full_hash():
    artifact = read_lock(REPO_LOCK)["inception_fid"]
    assert artifact.url == "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
    assert artifact.sha256.startswith("6726825d")  # torch.hub names carry the hash prefix
    assert (artifact.sha256, artifact.size) == ("6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", 95628359)
    assert artifact.filename.endswith("/pt_inception-2015-12-05-6726825d.pth")

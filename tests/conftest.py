import os

import pytest
import torch
import torchvision

os.environ.setdefault("PYTHONHASHSEED", "0")
# Two cores on CI: keep intra-op threads from oversubscribing when tests spawn processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """Random VGG-16 weights under torchvision's keys ("features.N.weight") for the inpainting loss; the classifier
    (unused by the loss) is left out to keep it small. Module scope: each module starts from the same seed."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: on a busy 2-core machine a second (spinning) OpenMP thread only slows them down.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

import os

import pytest
import torch
import torchvision

os.environ.setdefault("PYTHONHASHSEED", "0")
# One intra-op thread per test process, and for the programs the tests start: CI runs two test processes on two
# cores (make test: pytest -n 2), and a second OpenMP thread per process only oversubscribes them (a test that
# trained EfficientNet-B0 took 9 s alone and 60-120 s in the suite with two); runs compared bit for bit with a
# program's run also need the same thread count on both sides (summation order).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """Random VGG-16 weights under torchvision's keys ("features.N.weight") for the inpainting loss; the classifier
    (unused by the loss) is left out to keep it small. Module scope: each module starts from the same seed."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path

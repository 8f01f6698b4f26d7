"""scripts/convert_checkpoint.py as a user runs it, in a process where torch cannot be imported."""
import os

import numpy as np
import pytest
import torch
import torchvision

import tfrcnn
from no_torch import run_without_torch
from tfrcnn.training.trainer import initialize_from

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "convert_checkpoint.py")
TINY = os.path.join(REPO, "tests", "modeling", "configs", "mask_rcnn_r18_tiny.yaml")


def convert(*args):
    return run_without_torch(SCRIPT, *args, timeout=300)


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_converts_without_torch_and_initializes_a_detector(resnet18_state, tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path, _use_new_zipfile_serialization=False)  # the format of older downloads
    out = convert("--checkpoint", path, "--arch", "resnet18", "--output_dir", tmp_path / "out")
    assert out.returncode == 0, out.stderr[-3000:]
    prefix = str(tmp_path / "out" / "backbone")
    assert f"to {prefix}" in out.stdout and f"--init_checkpoint {prefix}" in out.stdout

    model = tfrcnn.build_model(tfrcnn.load_config(TINY), build_size=(64, 64))
    copied, _, _ = initialize_from(model, prefix)
    assert copied == len(model.backbone.variables)
    conv1 = next(layer for layer in model.backbone._flatten_layers() if layer.name == "conv1")
    np.testing.assert_array_equal(conv1.kernel.numpy(), resnet18_state["conv1.weight"].numpy().transpose(2, 3, 1, 0))


def test_a_state_dict_that_does_not_fit_is_one_error_line(resnet18_state, tmp_path):
    state = dict(resnet18_state)
    del state["layer4.1.bn2.running_mean"]
    torch.save(state, tmp_path / "broken.pth")
    out = convert("--checkpoint", tmp_path / "broken.pth", "--arch", "resnet18", "--output_dir", tmp_path / "out")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 1 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "does not fit the model: 1 missing: layer4.1.bn2.running_mean" in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_pickle_that_calls_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pth")
    out = convert("--checkpoint", tmp_path / "evil.pth", "--arch", "resnet18", "--output_dir", tmp_path / "out")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 1 and len(errors) == 1, out.stderr[-3000:]
    assert "refusing to unpickle 'posix.system'" in errors[0] and not marker.exists()

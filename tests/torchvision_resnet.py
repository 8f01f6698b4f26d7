"""torchvision ResNets as numerical references for tfrcnn's backbone (tests/modeling, tests/convert)."""
import torch


def randomize_batchnorm(model, eps=1e-5):
    """Random affine parameters and running statistics, so a parity test sees every BN term."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = eps
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, std=0.1)
            m.running_mean.normal_(std=0.1)
            m.running_var.uniform_(0.5, 1.5)


def stage_outputs(reference, x):
    """C2..C5 of a torchvision ResNet (eval mode) for NCHW input x: NHWC numpy arrays, layer1..layer4."""
    with torch.no_grad():
        r = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        outputs = []
        for stage in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            r = stage(r)
            outputs.append(r.permute(0, 2, 3, 1).numpy())
    return outputs

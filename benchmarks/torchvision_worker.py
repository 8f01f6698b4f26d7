"""torchvision's side of scripts/benchmark.py, in a process of its own (torch and TensorFlow are not loaded
together): the twin of the config's model (benchmarks/torchvision_twin.py), timed one unit of work at a time.

It answers JSON requests on stdin, one per line, with one JSON line on stdout: {"setup": {...}} builds the twin and
loads the batch files (→ {"ok": true}), {"run": mode, "batch": n} times one unit (→ {"seconds": t}), {"memory": true}
reports the peak memory (→ {"peak_memory_mb": m}). scripts/benchmark.py's TorchvisionClient is the other end.
"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_twin import build_optimizer, build_twin  # noqa: E402


def setup(cfg):
    """The state of a run: the twin on the device, the training batch and targets, the inference images."""
    torch.manual_seed(0)
    device = torch.device("cuda" if cfg["gpu"] and torch.cuda.is_available() else "cpu")
    model = build_twin(cfg["twin"]).to(device)
    batch = np.load(cfg["batch_file"])
    images = [torch.from_numpy(batch[f"image_{i}"]).to(device) for i in range(int(batch["count"]))]
    targets = [{"boxes": torch.from_numpy(batch[f"boxes_{i}"]).to(device),
                "labels": torch.from_numpy(batch[f"labels_{i}"]).to(device),
                "masks": torch.from_numpy(batch[f"masks_{i}"]).to(device)} for i in range(len(images))]
    inference = [torch.from_numpy(x).permute(2, 0, 1).float().div(255).to(device)
                 for x in np.load(cfg["inference_file"])]
    half = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(cfg["precision"])
    return dict(model=model, images=images, targets=targets, inference=inference, device=device, half=half,
                optimizer=build_optimizer(cfg["twin"], model), grad_clip=cfg["twin"]["optimizer"]["grad_clip"])


def run(state, mode, batch):
    """Seconds of one inference call on `batch` images, or of one training step (mode "train")."""
    model, device = state["model"], state["device"]
    autocast = torch.autocast(device.type, dtype=state["half"], enabled=state["half"] is not None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    if mode == "train":
        model.train()
        with autocast:
            losses = model(state["images"], state["targets"])
        loss = sum(losses.values())
        state["optimizer"].zero_grad()
        loss.backward()
        if state["grad_clip"] is not None:  # as tfrcnn's optimizer clips the global norm
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], state["grad_clip"])
        state["optimizer"].step()
        float(loss.detach())
    else:
        model.eval()
        with torch.no_grad(), autocast:
            out = model(state["inference"][:batch])
        [o["masks" if "masks" in o else "boxes"].sum().item() for o in out]
    sync()
    return time.perf_counter() - start


def main():
    state = {}
    for line in sys.stdin:
        request = json.loads(line)
        if "setup" in request:
            state = setup(request["setup"])
            answer = {"ok": True}
        elif "run" in request:
            answer = {"seconds": run(state, request["run"], request["batch"])}
        elif state["device"].type == "cuda":
            answer = {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
        else:  # Linux reports KiB
            answer = {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()

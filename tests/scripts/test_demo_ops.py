"""The README's first command runs scripts/demo_ops.py: it must keep working end to end."""
import os
import re
import subprocess
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_runs_every_stage_and_draws(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/demo_ops.py", "--image_size", "192", "--output_dir", str(tmp_path),
         "--params_override", "test_cfg.rcnn.max_per_img=10"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for stage in ("AnchorGenerator", "MaxIoUAssigner (rpn)", "RandomSampler (rpn)", "proposals", "RoIAlign",
                  "mask targets", "multiclass NMS", "paste_masks"):
        assert stage in out, out
    # 192×192 with strides 4..64: (48² + 24² + 12² + 6² + 3²) locations × 3 anchors = 9207 anchors.
    assert "9207 anchors over 5 levels" in out
    detections = int(re.search(r"(\d+) detections above score", out).group(1))
    assert 1 <= detections <= 10  # each shape is found; the override caps the count
    with Image.open(tmp_path / "demo.png") as picture:
        assert picture.size == (192, 192)
    assert "max_per_img: 10" in (tmp_path / "config.yaml").read_text()

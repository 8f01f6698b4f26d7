"""scripts/benchmark.py end to end on a tiny model: JSON lines with the timings, the torchvision comparison
alternating with tfrcnn, and the stage profile."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "modeling", "configs", "mask_rcnn_r18_tiny.yaml")


def test_benchmark_reports_each_mode_against_torchvision(tmp_path):
    output = tmp_path / "bench.jsonl"
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"), "--config_file", TINY, "--image_size", "128",
         "--modes", "inference", "--modes", "throughput", "--modes", "train", "--throughput_batch", "2",
         "--warmup", "1", "--repeats", "2", "--compare", "torchvision", "--profile", "--output", str(output)],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in records] == ["inference", "throughput", "train", "profile"]
    assert [json.loads(line) for line in output.read_text().splitlines()] == records
    # the training batch defaults to the config's data.samples_per_gpu (2)
    for record, batch in zip(records[:3], (1, 2, 2)):
        assert record["batch"] == batch and record["image_size"] == 128 and record["device"] == "cpu"
        assert record["data"] == "synthetic" and record["cpu"] and set(record["cpu_features"]) <= {
            "avx2", "avx512f", "avx512_bf16", "amx_bf16"}
        for side in ("tfrcnn", "torchvision"):
            t = record[side]
            assert t["runs"] == 2 and 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
            assert abs(t["images_per_s"] - batch / t["median_s"]) < 1e-2 * t["images_per_s"] + 1e-3
            assert t["peak_memory_mb"] > 100
        assert len(record["ratios"]) == 2 and all(r > 0 for r in record["ratios"])
    stages = records[3]["stages_s"]
    assert set(stages) == {"preprocess", "backbone", "fpn", "rpn_head", "proposals_nms", "roi_pyramid",
                           "roi_align_box", "box_head",
                           "detections_nms", "roi_align_mask", "mask_head", "paste_masks"}
    assert all(v > 0 for v in stages.values())

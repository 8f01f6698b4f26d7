"""Every script's command line: `--help` documents every flag, and a bad flag, a missing required flag, a stray
argument or a missing file is one `error: ...` line on stderr with exit status 1.

Real processes, since the exit status and the streams are the point; every case fails before TensorFlow loads
(a fraction of a second each), except where a script imports it first.
"""
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["train", "evaluate", "export_saved_model", "predict", "create_coco_tfrecord", "benchmark_input",
           "demo_ops", "convert_checkpoint", "benchmark"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

# A value absl rejects: an enum where the script has one, else a number out of range or not a number.
BAD_VALUES = {
    "train": (["--mode", "fit"], "--mode=fit"),
    "evaluate": (["--split", "dev"], "--split=dev"),
    "export_saved_model": (["--input_type", "jpeg"], "--input_type=jpeg"),
    "predict": (["--score_threshold", "2"], "--score_threshold=2"),
    "create_coco_tfrecord": (["--num_shards", "many"], "--num_shards=many"),
    "benchmark_input": (["--split", "dev"], "--split=dev"),
    "demo_ops": (["--image_size", "100"], "multiple of 64"),
    "convert_checkpoint": (["--arch", "resnet7"], "--arch=resnet7"),
    "benchmark": (["--precision", "fp8"], "--precision=fp8"),
}
# What each script needs, with one file that is not there; {tmp} is an empty folder. The message names the file.
MISSING_FILES = {
    "train": (["--model_dir", "{tmp}/run", "--config_file", "{tmp}/nope.yaml"], "{tmp}/nope.yaml"),
    "evaluate": (["--model_dir", "{tmp}/run"], "{tmp}/run/config.yaml"),
    "export_saved_model": (["--model_dir", "{tmp}", "--export_dir", "{tmp}/export"], "{tmp}/config.yaml"),
    "predict": (["--saved_model_dir", "{tmp}", "--image", "{tmp}/nope.jpg", "--output_dir", "{tmp}/out"],
                "{tmp}/nope.jpg"),
    "create_coco_tfrecord": (["--image_dir", "{tmp}", "--object_annotations_file", "{tmp}/nope.json",
                              "--output_file_prefix", "{tmp}/out/train"], "{tmp}/nope.json"),
    "benchmark_input": (["--config_file", "{tmp}/nope.yaml"], "{tmp}/nope.yaml"),
    "demo_ops": (["--config_file", "{tmp}/nope.yaml", "--output_dir", "{tmp}/out"], "{tmp}/nope.yaml"),
    "convert_checkpoint": (["--checkpoint", "{tmp}/nope.pth", "--arch", "resnet50", "--output_dir", "{tmp}/out"],
                           "{tmp}/nope.pth"),
    "benchmark": (["--config_file", "{tmp}/nope.yaml"], "{tmp}/nope.yaml"),
}
# Flags marked as required: leaving all of them out names each.
REQUIRED = {
    "train": ["model_dir"],
    "export_saved_model": ["export_dir"],
    "predict": ["image", "output_dir"],
    "create_coco_tfrecord": ["image_dir", "object_annotations_file", "output_file_prefix"],
    "convert_checkpoint": ["checkpoint", "arch", "output_dir"],
}
# A value that passes the flag's own validation, for required flags that are not free strings.
VALID = {"arch": "resnet50"}


def _script(name):
    return os.path.join(ROOT, "scripts", name + ".py")


def _run(name, *args):
    return subprocess.run([sys.executable, _script(name), *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)


def _one_error(out):
    """The one line the process wrote to stderr, which must be an `error:` line after a failure."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), \
        f"status {out.returncode}, stderr:\n{out.stderr[-3000:]}"
    return lines[0]


def _defined_flags(name):
    """{flag name: help text} of the flags the script itself defines, as absl lists them (--helpxml)."""
    out = _run(name, "--helpxml")
    root = ElementTree.fromstring(out.stdout)
    return {flag.findtext("name"): flag.findtext("meaning") for flag in root.iter("flag")
            if flag.findtext("file") == _script(name)}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_documents_every_flag(name):
    defined = _defined_flags(name)
    assert defined
    out = _run(name, "--help")
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr[-2000:]
    # absl: "  --name: help text\n    (default: '...')\n ..." per flag, "--[no]name" for a boolean
    blocks = dict(re.findall(r"^  --(?:\[no\])?(\w+): (.*?)(?=^  --|^\S|\Z)", out.stdout, re.M | re.S))
    for flag, meaning in defined.items():
        assert flag in blocks, f"--help of {name}.py does not show --{flag}:\n{out.stdout}"
        assert len(meaning) >= 15, f"{name}.py --{flag}: help text {meaning!r} says too little"
        # absl prints "(default: ...)" unless the default is None; then the text must say what happens.
        assert re.search(r"\(default: |default|required", blocks[flag], re.I), \
            f"{name}.py --{flag}: the help says neither its default nor that it is required: {meaning!r}"
    assert not _run(name, "--helpfull").returncode


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_flag_and_stray_argument(name):
    assert _one_error(_run(name, "--no_such_flag=1")) == "error: unknown flag --no_such_flag (see --help)"
    given = [f"--{flag}={VALID.get(flag, 'x')}" for flag in REQUIRED.get(name, [])]  # else absl reports those first
    assert "stray" in _one_error(_run(name, *given, "stray"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_bad_value(name):
    args, message = BAD_VALUES[name]
    assert message in _one_error(_run(name, *args))


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_missing_required_flags(name):
    error = _one_error(_run(name))
    for flag in REQUIRED[name]:
        assert f"--{flag}" in error


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_file(name, tmp_path):
    args, path = MISSING_FILES[name]
    error = _one_error(_run(name, *(a.format(tmp=tmp_path) for a in args)))
    assert path.format(tmp=tmp_path) in error
    assert os.listdir(tmp_path) == [], "nothing is written before the inputs are checked"

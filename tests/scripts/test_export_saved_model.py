"""scripts/export_saved_model.py: its flags and its one-line errors (the export itself: tests/test_export.py)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "export_saved_model.py")
FLAGS = ("model_dir", "config_file", "checkpoint_path", "export_dir", "input_type", "paste_masks", "params_override")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _one_error(out):
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_help_lists_every_flag():
    out = _run("--help")  # every script's flags: tests/scripts/test_flags.py
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr[-2000:]
    for flag in FLAGS:
        assert f"--{flag}" in out.stdout
    assert "image_tensor" in out.stdout and "image_bytes" in out.stdout and "tf_example" in out.stdout


def test_missing_model_dir_is_one_error_line(tmp_path):
    error = _one_error(_run("--export_dir", str(tmp_path / "export")))
    assert "--model_dir" in error and "--config_file and --checkpoint_path" in error


def test_missing_export_dir_and_bad_run_dir(tmp_path):
    assert _one_error(_run("--model_dir", str(tmp_path))) == "error: --export_dir is required (see --help)"
    error = _one_error(_run("--model_dir", str(tmp_path / "nowhere"), "--export_dir", str(tmp_path / "export")))
    assert f"{tmp_path / 'nowhere'}" in error and "config.yaml" in error
    assert not (tmp_path / "export").exists()

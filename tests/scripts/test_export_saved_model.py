"""scripts/export_saved_model.py: its own one-line error (the export itself: tests/test_export.py; --help, a missing
--export_dir or run directory: tests/scripts/test_flags.py, for every script; a damaged checkpoint: test_errors.py)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "export_saved_model.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _one_error(out):
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_missing_model_dir_is_one_error_line(tmp_path):
    error = _one_error(_run("--export_dir", str(tmp_path / "export")))
    assert "--model_dir" in error and "--config_file and --checkpoint_path" in error

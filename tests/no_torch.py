"""Runs a script in a subprocess in which `import torch` (and torchvision) fails, as on a machine without them."""
import os
import subprocess
import sys

_RUNNER = """
import runpy, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, NoTorch())
sys.path.insert(0, sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without_torch(script, *args, timeout=600):
    """subprocess.CompletedProcess of `python script args...` (text stdout/stderr) with torch unimportable."""
    return subprocess.run([sys.executable, "-c", _RUNNER, os.path.dirname(script), script, *map(str, args)],
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True,
                          timeout=timeout)

"""What every script shares: absl flags with one-line errors, quiet TensorFlow logs, and checks that fail before
TensorFlow loads.

A script defines its flags with absl and ends with `_cli.run(main)` instead of `app.run(main)`. Then:
- `--help` (`-?`, `--helpshort`), `--helpfull` and `--helpxml` print the help and exit with status 0 (absl: 1);
- a bad command line (unknown flag, bad value, missing required flag, positional argument) prints one line
  `error: <what> (see --help)` on stderr and exits with status 1, before `main` runs (absl prints a
  "FATAL Flags parsing error" block and a hint, or for a positional argument the whole usage);
- in `main`, `app.UsageError`, `OSError` (FileNotFoundError, ...) and `ValueError` (which includes tfrcnn's
  ConfigError and CocoFormatError) print one line `error: <message>` and exit with status 1, without a
  traceback. So does any TensorFlow error (`tf.errors.OpError`) that no call site turned into one of those: the
  line is the first line of TensorFlow's own message, without its graph context. Any other exception is a bug
  and keeps its traceback. Call sites that know the file (a checkpoint, a TFRecord shard, an image) re-raise
  TensorFlow's errors as OSError / ValueError naming it (tfrcnn.training.checkpoints, tfrcnn.data.pipeline).
- `--verbose` (every script has it) shows the traceback above the `error:` line and all of TensorFlow's logs.
  (absl's `--verbosity=1` still logs the traceback too.)
- TensorFlow is quiet otherwise: importing this module sets `TF_CPP_MIN_LOG_LEVEL=3` (unless it is set already,
  or `--verbose` is on the command line: the flags are not parsed yet, so sys.argv is read), which hides the C++
  INFO, WARNING and ERROR logs (oneDNN and CPU-feature notices, `failed call to cuInit` without a GPU, Grappler's
  `Error in PredictCost()`); worker processes inherit it. The few lines TensorFlow logs while it loads, before
  it reads that variable (the oneDNN notice, "Could not find cuda drivers", absl's "All log messages before
  absl::InitializeLog()"), are held back as the level says: the first `import tensorflow` runs with the file
  descriptor of stderr redirected, and every other line it printed is written out afterwards. Python's side:
  absl logging shows warnings and errors only (absl's app.run would show INFO: TensorFlow logs a line per
  checkpoint saved), unless `--verbosity` is given.

This module imports only the standard library, absl and `tfrcnn.config`'s file name (which loads no TensorFlow):
TensorFlow takes seconds to load, so scripts import it (and the rest of tfrcnn) inside `main`, after their flags and
files are checked. Flags that several scripts share are defined here once: `define_config_flags` and
`define_checkpoint_flags`.
"""
import glob
import importlib.util
import os
import re
import sys
import tempfile
import traceback

from absl import app, flags, logging

from tfrcnn.config import CONFIG_NAME

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The default of --config_file in the tools (benchmarks, the ops demo): MMDetection's Mask R-CNN R50-FPN 1x.
R50_CONFIG = os.path.join(REPO, "configs", "mask_rcnn_r50_fpn_1x_coco.yaml")
UsageError = app.UsageError  # raise it in main for a bad combination of flags
PRECISIONS = ["float32", "mixed_bfloat16", "mixed_float16"]  # --precision: runtime.mixed_precision's Keras policies
USER_ERRORS = (UsageError, OSError, ValueError)
_HELP_FLAGS = {"help", "?", "helpshort", "helpfull", "helpxml"}
_REQUIRED = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")
_UNKNOWN = re.compile(r"Unknown command line flag '([^']*)'(?:\. Did you mean: (.*) \?)?")
_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"

flags.DEFINE_boolean("verbose", False, "Show the traceback of an error (above its one `error:` line) and all of "
                     "TensorFlow's logs (by default its C++ logs are hidden, TF_CPP_MIN_LOG_LEVEL=3, and Python "
                     "logs below WARNING).")


def _verbose_on_command_line(argv):
    """Whether argv turns --verbose on (its last mention wins), read before absl parses the flags."""
    verbose = False
    for arg in argv[1:]:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "verbose":
            verbose = value.lower() not in ("false", "0", "f", "no", "n")
        elif arg.startswith("-") and name == "noverbose":
            verbose = False
    return verbose


VERBOSE = _verbose_on_command_line(sys.argv)
if VERBOSE:
    os.environ[_LOG_LEVEL] = "0"  # all of TensorFlow's logs, whatever the environment said
else:
    os.environ.setdefault(_LOG_LEVEL, "3")


def _min_log_level():
    try:
        return int(os.environ.get(_LOG_LEVEL, "0"))
    except ValueError:
        return 0


# absl's C++ log prefix: severity, MMDD and time (0000 00:00:<epoch seconds> before absl::InitializeLog),
# thread, file:line].
_TF_LOG_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _hidden(line, level):
    """Whether a line that TensorFlow printed while loading is below TF_CPP_MIN_LOG_LEVEL `level`."""
    if line.rstrip("\n") == _PRE_INIT:
        return level >= 1  # it only precedes the INFO lines below
    found = _TF_LOG_LINE.match(line)
    return bool(found) and "IWEF".index(found.group(1)) < level


def _run_with_stderr_filtered(function, level):
    """Runs function() with file descriptor 2 redirected to a temporary file, then writes to stderr the lines
    that `_hidden` keeps (TensorFlow logs its first lines while it loads, before it reads TF_CPP_MIN_LOG_LEVEL)."""
    sys.stderr.flush()
    saved = os.dup(2)
    capture = tempfile.TemporaryFile()
    os.dup2(capture.fileno(), 2)
    try:
        return function()
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf8", "replace")
        capture.close()
        kept = "".join(line for line in text.splitlines(keepends=True) if not _hidden(line, level))
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()


class _QuietTensorFlowImport:
    """A sys.meta_path finder: the first `import tensorflow` (wherever it happens) runs under
    `_run_with_stderr_filtered`; then the finder removes itself."""

    def __init__(self, level):
        self.level = level

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module
            spec.loader.exec_module = lambda module: _run_with_stderr_filtered(lambda: exec_module(module),
                                                                                 self.level)
        return spec


if not VERBOSE and _min_log_level() >= 1 and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport(_min_log_level()))


def run(main, errors=()):
    """absl's `app.run(main)` with the conventions above; `errors` adds exception types reported as one line."""
    caught = USER_ERRORS + tuple(errors)
    # --verbose is listed by --help with the script's own flags (absl lists flags of other modules in --helpfull)
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["verbose"])

    def guarded(argv):
        if not flags.FLAGS["verbosity"].present:  # else as the user said
            logging.set_verbosity(logging.INFO if flags.FLAGS.verbose else logging.WARNING)
        try:
            return main(argv)
        except caught as e:
            _report(str(e) or type(e).__name__)
        except Exception as e:  # noqa: BLE001  (a TensorFlow error is reported as one line, anything else raised)
            if not _is_tensorflow_error(e):
                raise
            _report(tensorflow_error_line(e))

    app.run(guarded, flags_parser=_parse_flags)


def _report(message):
    if flags.FLAGS.verbose:
        traceback.print_exc()
    else:
        logging.debug("traceback of the error below", exc_info=True)  # absl's --verbosity=1
    _exit_with_error(message)


def _is_tensorflow_error(e):
    """Whether e is a tf.errors.OpError (looked up only if TensorFlow is loaded: this module does not load it)."""
    tf = sys.modules.get("tensorflow")
    op_error = getattr(getattr(tf, "errors", None), "OpError", None)
    return isinstance(op_error, type) and isinstance(e, op_error)


# TensorFlow's context around an op error's own message: a graph's "Detected at node" block with the Python
# stack that built the node, "[[{{node ...}}]]" lines, a "{{function_node ...}}" prefix and an "[Op:...]" suffix.
_FUNCTION_NODE = re.compile(r"^(?:\{\{function_node [^}]*\}\}\s*)+")
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\](?:\s*name:\s*\S*)?\s*$")
_USER_FUNCTION = re.compile(r"^Error in user-defined function passed to \S+ transformation with iterator: \S+: ")


def tensorflow_error_line(e):
    """The message of TensorFlow error e as one line: the op's own message (its first line), without the graph
    context TensorFlow puts around it."""
    lines = [line for line in (getattr(e, "message", None) or str(e)).splitlines() if line.strip()]
    if lines and lines[0].startswith("Graph execution error"):
        # the op's message is the line before the first "[[{{node ...}}]]" (else the last line)
        marks = [i for i, line in enumerate(lines) if line.strip().startswith("[[")]
        lines = lines[marks[0] - 1:] if marks and marks[0] > 0 else lines[-1:]
    line = lines[0].strip() if lines else type(e).__name__
    line = _USER_FUNCTION.sub("", _OP_SUFFIX.sub("", _FUNCTION_NODE.sub("", line)))
    return line or type(e).__name__


def _parse_flags(argv):
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        _exit_with_error(_flag_error(str(e)))
    except SystemExit as e:
        # absl's help flags print the help, then exit with status 1: asking for help is no failure.
        if e.code == 1 and _asks_for_help(argv):
            sys.exit(0)
        raise
    if len(remaining) > 1:
        _exit_with_error(f"unexpected argument{'s' * (len(remaining) > 2)} {' '.join(remaining[1:])!r}: "
                         "flags are --name=value (see --help)")
    return remaining


def _flag_error(message):
    """absl's message (one line per failed validator) as one line: missing required flags named together, an
    unknown flag with absl's suggestions."""
    unknown = _UNKNOWN.fullmatch(message.strip())
    if unknown:
        name, suggestions = unknown.groups()
        if suggestions:
            return f"unknown flag --{name} (did you mean --{', --'.join(suggestions.split(', '))}?)"
        return f"unknown flag --{name} (see --help)"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    missing = [m.group(1) for m in map(_REQUIRED.fullmatch, lines) if m]
    others = [line for line in lines if not _REQUIRED.fullmatch(line)]
    if missing:
        names = ", ".join(f"--{name}" for name in missing)
        others.insert(0, f"{names} {'is' if len(missing) == 1 else 'are'} required")
    return "; ".join(others).removeprefix("ERROR:: ") + " (see --help)"  # absl's prefix for a bad --flagfile


def _asks_for_help(argv):
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith("-") and arg.lstrip("-").split("=", 1)[0] in _HELP_FLAGS:
            return True
    return False


def _exit_with_error(message):
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(1)


def _local(path):
    """Whether `path` is on the local file system (gs://... and other URLs are left to tf.io.gfile)."""
    return "://" not in path


def check_file(path, what="file"):
    """Raises FileNotFoundError `<path>: no such <what>` when a local path is not a file."""
    if path and _local(path) and not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such {what}")


def check_config_files(config_file):
    """Raises FileNotFoundError as `tfrcnn.config.load_config` words it when a config file (a path, a list of
    them, or None for none) is missing."""
    for path in [config_file] if isinstance(config_file, str) else config_file or []:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: config file not found: {os.path.abspath(path)}")


def define_config_flags(default=None, default_help="Default: none."):
    """--config_file (repeatable) and --params_override, as every script that reads a config takes them; `default`
    is --config_file's, a list of paths."""
    flags.DEFINE_multi_string("config_file", default, "A YAML config; repeat the flag to merge several in order, "
                              f"later files winning. {default_help}")
    flags.DEFINE_string("params_override", None, "Config overrides as a.b=c,d.e=f, applied after the config files, "
                        "e.g. test_cfg.rcnn.score_thr=0.3,data.samples_per_gpu=4. Default: none.")


def define_checkpoint_flags():
    """--model_dir, --config_file, --checkpoint_path and --params_override: the trained detector a script runs
    (`checkpoint_args` reads them)."""
    flags.DEFINE_string("model_dir", None, "A training run's directory: its config.yaml and newest checkpoint are "
                        "the defaults of --config_file and --checkpoint_path. Give it, or both of those.")
    define_config_flags(default_help="Default: <model_dir>/config.yaml.")
    flags.DEFINE_string("checkpoint_path", None, "A checkpoint prefix such as <model_dir>/ckpt-12 (the files "
                        "ckpt-12.index and ckpt-12.data-*). Default: the newest checkpoint in --model_dir.")
    flags.DEFINE_enum("precision", None, PRECISIONS, "What the backbone, FPN and heads compute in "
                      "(runtime.mixed_precision: the weights stay float32; box decoding, NMS scores and mask "
                      "pasting stay float32 in any case). mixed_bfloat16 is fast on CPUs with AMX or AVX512_BF16 "
                      "(docs/serving.md). Default: the config's.")


def checkpoint_args():
    """The flags of `define_checkpoint_flags` as `tfrcnn.training.checkpoints.load_model`'s keyword arguments,
    checked before TensorFlow loads: UsageError without --model_dir or --config_file and --checkpoint_path,
    FileNotFoundError (load_model's messages) for a file that is missing."""
    f = flags.FLAGS
    if not (f.model_dir or (f.config_file and f.checkpoint_path)):
        raise UsageError("give --model_dir (a training run's directory), or --config_file and --checkpoint_path")
    if f.config_file:
        check_config_files(f.config_file)
    else:
        path = os.path.join(f.model_dir, CONFIG_NAME)
        if _local(path) and not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file (is {f.model_dir} a training run's model_dir?)")
    if f.checkpoint_path:
        if _local(f.checkpoint_path) and not os.path.isfile(f.checkpoint_path + ".index"):
            raise FileNotFoundError(f"{f.checkpoint_path}: no such checkpoint ({f.checkpoint_path}.index is missing)")
    elif _local(f.model_dir) and not glob.glob(os.path.join(glob.escape(f.model_dir), "*.index")):
        raise FileNotFoundError(f"no checkpoint in {f.model_dir}")
    overrides = [o for o in (f.params_override, f.precision and precision_override(f.precision)) if o]
    return dict(model_dir=f.model_dir, config_file=f.config_file, checkpoint_path=f.checkpoint_path,
                overrides=overrides or None)


def precision_override(precision):
    """The --params_override item that sets `precision` (float32, mixed_bfloat16 or mixed_float16)."""
    return f"runtime.mixed_precision={'null' if precision == 'float32' else precision}"

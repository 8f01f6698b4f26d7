"""What every script shares: absl flags with one-line errors, and checks that fail before TensorFlow loads.

A script defines its flags with absl and ends with `_cli.run(main)` instead of `app.run(main)`. Then:
- `--help` (`-?`, `--helpshort`), `--helpfull` and `--helpxml` print the help and exit with status 0 (absl: 1);
- a bad command line (unknown flag, bad value, missing required flag, positional argument) prints one line
  `error: <what> (see --help)` on stderr and exits with status 1, before `main` runs (absl prints a
  "FATAL Flags parsing error" block and a hint, or for a positional argument the whole usage);
- in `main`, `app.UsageError`, `OSError` (FileNotFoundError, ...) and `ValueError` (which includes tfrcnn's
  ConfigError and CocoFormatError) print one line `error: <message>` and exit with status 1, without a
  traceback (run with `--verbosity=1` to log it). Any other exception is a bug and keeps its traceback.

This module imports only the standard library and absl: TensorFlow takes seconds to load, so scripts import it
(and tfrcnn, whose __init__ imports it) inside `main`, after their flags and files are checked.
"""
import glob
import os
import re
import sys

from absl import app, flags, logging

UsageError = app.UsageError  # raise it in main for a bad combination of flags
USER_ERRORS = (UsageError, OSError, ValueError)
_HELP_FLAGS = {"help", "?", "helpshort", "helpfull", "helpxml"}
_REQUIRED = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")
_UNKNOWN = re.compile(r"Unknown command line flag '([^']*)'(?:\. Did you mean: (.*) \?)?")


def run(main, errors=()):
    """absl's `app.run(main)` with the conventions above; `errors` adds exception types reported as one line."""
    caught = USER_ERRORS + tuple(errors)

    def guarded(argv):
        try:
            return main(argv)
        except caught as e:
            logging.debug("traceback of the error below", exc_info=True)
            _exit_with_error(str(e) or type(e).__name__)

    app.run(guarded, flags_parser=_parse_flags)


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


def check_run(model_dir=None, config_file=None, checkpoint_path=None):
    """Checks, before anything heavy loads, the files `tfrcnn.training.checkpoints.load_model` will read, and
    raises its FileNotFoundError (same messages) when one is missing.

    Args:
      model_dir: a training run's directory (config.yaml and ckpt-N files), or None.
      config_file: a config path or a list of them (instead of model_dir/config.yaml), or None.
      checkpoint_path: a checkpoint prefix (instead of model_dir's newest), or None.
    """
    if config_file:
        check_config_files(config_file)
    else:
        if model_dir is None:
            raise FileNotFoundError("give a model_dir (with config.yaml) or a config_file")
        path = os.path.join(model_dir, "config.yaml")
        if _local(path) and not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file (is {model_dir} a training run's model_dir?)")
    if checkpoint_path:
        if _local(checkpoint_path) and not os.path.isfile(checkpoint_path + ".index"):
            raise FileNotFoundError(f"{checkpoint_path}: no such checkpoint ({checkpoint_path}.index is missing)")
    elif model_dir is None:
        raise FileNotFoundError("give a checkpoint_path")
    elif _local(model_dir) and not glob.glob(os.path.join(glob.escape(model_dir), "*.index")):
        raise FileNotFoundError(f"no checkpoint in {model_dir}")

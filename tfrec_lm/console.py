"""What a command line shows on its console: Keras's progress, and third-party noise kept out.

The command lines call these; the library itself neither prints nor touches these settings.

- `keras_verbosity`: Keras's progress bar on a terminal, one line per epoch otherwise (a
  log file or a pipe would fill with the bar's redraws).
- `quiet_third_party_logs` (before TensorFlow is imported) and `quiet_native_warnings`
  (after): TensorFlow's and CUDA's C++ start-up lines, absl's and transformers' notices
  stay off the console; `-v` skips both. BUILD_NOTES.md ("Console output") lists what
  they hide and why each line is harmless.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# absl's C++ `SetMinLogLevel(absl::LogSeverityAtLeast)` in TensorFlow 2.20's libtensorflow_cc
# (abseil LTS 2025-01-27, the build the tensorflow~=2.20.0 pin installs).
_ABSL_SET_MIN_LOG_LEVEL = "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"
_ABSL_ERROR = 2  # absl::LogSeverityAtLeast::kError


def keras_verbosity(stream=None) -> int:
    """Keras `fit`'s `verbose`: 1 (progress bar) on a terminal, else 2 (one line per epoch).

    Args:
        stream: file object or None. where Keras prints (default `sys.stdout`).

    Returns:
        int.
    """
    stream = sys.stdout if stream is None else stream
    try:
        return 1 if stream.isatty() else 2
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return 2


def quiet_third_party_logs() -> None:
    """Keeps TensorFlow's C++ log lines and absl's and transformers' notices off the console.

    Must run before TensorFlow and transformers are imported (they read the variables
    once, at import). A variable the user already set is left as it is.

    - `TF_CPP_MIN_LOG_LEVEL=3`: TensorFlow's C++ INFO/WARNING/ERROR lines (CUDA probing on
      a machine without a GPU driver, `cpu_feature_guard`, oneDNN); failures still reach
      Python as exceptions.
    - `TRANSFORMERS_VERBOSITY=error`: transformers' deprecation banner for its TensorFlow
      classes and its checkpoint-loading notices.
    - the `absl` Python logger at ERROR (TensorFlow's SavedModel notices);
    - tf-keras's "Callback method `on_train_batch_end` is slow" notice on the `tensorflow`
      logger (the backup and validation callbacks are slower than a millisecond batch).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").addFilter(_drop_slow_callback_notice)


def _drop_slow_callback_notice(record: logging.LogRecord) -> bool:
    """False for tf-keras's "Callback method `on_train_batch_end` is slow" notice (first epoch). bool."""
    return not str(record.msg).startswith("Callback method `on_train_batch_end` is slow")


def quiet_native_warnings() -> bool:
    """Drops absl's C++ WARNING lines (grappler's "Error in PredictCost()"), which `TF_CPP_MIN_LOG_LEVEL` misses.

    Call after `quiet_third_party_logs` (it imports TensorFlow). Where TensorFlow is not
    the pinned build (the function is not found) nothing changes.

    Returns:
        bool. True when the threshold was set.
    """
    import tensorflow

    library = Path(tensorflow.__file__).parent / "libtensorflow_cc.so.2"
    try:
        set_min_log_level = getattr(ctypes.CDLL(str(library)), _ABSL_SET_MIN_LOG_LEVEL)
    except (OSError, AttributeError) as error:
        logger.debug("absl's C++ log threshold is not reachable (%s): its warnings stay on", error)
        return False
    set_min_log_level.argtypes = [ctypes.c_int]
    set_min_log_level.restype = None
    set_min_log_level(_ABSL_ERROR)
    return True


def exit_at_once(code: int) -> None:
    """Ends a command line's process with `code`, skipping the interpreter's teardown.

    At shutdown Python frees every object one by one, and a catalog update holds many
    TensorFlow objects (two models, the loaded versions the gate scored, their traced
    functions): freeing them took about 1.4 s of a 16 s update on a 2-core CPU, which the operating
    system does at once. Everything a clean exit does for the files is still done first: other
    threads are waited for, the `atexit` handlers run (logging's flush, temporary files'
    clean-up), and both streams are flushed. Call it only as a CLI's last statement.

    Args:
        code: int. the exit status.
    """
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001  (what a normal exit runs; there is no public name for it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

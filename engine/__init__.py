"""engine: checkpoint/restore for Linux processes, as a pluggy plugin engine.

Plugins import `hookimpl` from here and nothing else heavy; everything else is
loaded lazily so that `engine --help` stays fast.
"""
import pluggy

hookimpl = pluggy.HookimplMarker("engine")

__all__ = ["hookimpl", "__version__"]


def __getattr__(name):
    if name == "__version__":
        from importlib.metadata import version, PackageNotFoundError
        try:
            return version("engine")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(name)

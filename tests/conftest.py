"""This project's tests use the engine.testing pytest plugin (subreaper,
targets, dump/restore fixtures). Like pytester it is opt-in, never loaded
into other projects' pytest runs: a conftest line, or `-p engine.testing`."""
pytest_plugins = ["engine.testing"]

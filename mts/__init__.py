"""The ``mts`` command line: build a model repository, serve it."""

"""Tooling shared by the tests (tests/) and the benchmarks (bench/): starting and stopping servers,
the machine a result was measured on, summary statistics, results files, tiny random encoders and
the crash-consistency loop.

Not part of the service: it is not installed with the ``multitask_serve`` distribution, and the
images never copy it. tests/ and bench/ both import it from the repository root (pytest's
``pythonpath``, ``python -m bench.x``); it imports neither of them.
"""

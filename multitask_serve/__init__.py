"""multitask-serve: many NLP tasks from one frozen transformer trunk and hot-pluggable ONNX heads.

One import package; its parts keep the repository's folders: ``service`` (the HTTP server and the
inference core), ``export`` (trunk and heads to ONNX), ``training`` (fine-tuning under freezing
strategies), ``modelrepo`` (the model repository format all of them share), and ``cli`` (``mts``).
"""

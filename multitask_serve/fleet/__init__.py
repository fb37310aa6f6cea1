"""The fleet variant: replicas of the service behind Ray Serve, each head's requests routed to a
replica that holds it (docs/scaling.md). Only ``fleet/ray_serve.py`` imports Ray, an optional
extra (``pip install multitask-serve[serve,fleet]``); the single-replica service never needs it.
"""

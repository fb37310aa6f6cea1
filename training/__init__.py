"""Fine-tune task heads under a freezing strategy on real data, and measure what each costs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

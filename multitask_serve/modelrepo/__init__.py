"""The shared vocabulary of trunk, heads and the model repository; importable without torch."""

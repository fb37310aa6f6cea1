"""The serving process: FastAPI routes -> engine -> ONNX Runtime sessions. No torch here."""

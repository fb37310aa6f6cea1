# Serving image: the serve extra only (no torch). The model repository is a volume built by
# `mts build` (train extra) elsewhere. Multi-stage, GPU variant and hardening arrive with k8s/.
FROM python:3.11-slim AS serve
WORKDIR /app
COPY pyproject.toml README.md ./
COPY spec ./spec
COPY service ./service
COPY mts ./mts
COPY export ./export
COPY training ./training
RUN pip install --no-cache-dir '.[serve]'
RUN useradd --uid 10001 --create-home mts
USER 10001
ENV MTS_REPOSITORY=/models MTS_HOST=0.0.0.0 MTS_PORT=8000
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["mts", "serve"]

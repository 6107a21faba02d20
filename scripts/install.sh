#!/usr/bin/env bash
# Installs mixvlp-ds on a fresh machine (CPU). `scripts/install.sh dev` adds the test tools.
# Order matters: the CPU torch first, then everything else constrained to it (see constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
export DS_BUILD_OPS=0 PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q torch==2.13.0
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
pip install -q -c constraints.txt -e ".${extra}"
# MosaicML streaming (MDS backend): its declared deps would replace torch; install it bare plus the
# light libraries it really uses. mixvlp_ds.data.mds_backend stubs streaming.vision (torchvision).
pip install -q --no-deps "streaming-community>=0.14"
pip install -q -c constraints.txt brotli python-snappy zstd xxhash catalogue tqdm

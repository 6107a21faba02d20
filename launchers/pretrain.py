"""Pre-training entry point (thin): see mixvlp_ds/train/pretrain.py and docs/training.md.

    deepspeed launchers/pretrain.py --deepspeed_config ds_configs/zero2.json --config configs/uwox_ms_b8.yaml
    torchrun --nproc_per_node 2 launchers/pretrain.py --deepspeed_config ds_configs/cpu.json \
        --config configs/tiny_cpu.yaml
    python launchers/pretrain.py --config configs/tiny_cpu.yaml train.steps=20
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mixvlp_ds.train.pretrain import cli, exit_now  # noqa: E402

if __name__ == "__main__":
    exit_now(cli(sys.argv[1:]))

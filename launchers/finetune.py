"""Fine-tuning entry point (thin): see mixvlp_ds/apps/finetune.py and docs/applications.md.

    python launchers/finetune.py --config configs/finetune_tiny.yaml --task cls init=runs/tiny_cpu/model
    python launchers/finetune.py --config configs/finetune_tiny.yaml --task retrieval init=s3://bucket/run/model
    deepspeed launchers/finetune.py --config ...   (fine-tuning sets are small: rank 0 does the work)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mixvlp_ds.programs.console import finetune  # noqa: E402

if __name__ == "__main__":
    sys.exit(finetune())

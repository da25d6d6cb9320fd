"""Training as a Ray Job: the same command as `lipsync train`, for a cluster.

    ray job submit --working-dir . -- python jobs/train.py \
        --config lipsync/configs/train/unet_stage1.yaml --save_dir s3://bucket/runs --num_workers 8 --use_gpu

Inside a Ray Job the driver joins the job's cluster (RAY_ADDRESS is set by `ray job submit`), so
no --address is needed. `--save_dir` must be storage every node reaches (S3, NFS) on a multi-node
cluster. Flags: `python jobs/train.py --help`. Exit code: 0 trained and exported, 1 the run could
not start or failed.
"""

import os
import sys

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from pipelines.train_cli import main_train

    sys.exit(main_train())

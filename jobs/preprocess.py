"""Training-data preparation as a Ray Job: the same command as `lipsync preprocess`, for a cluster.

    ray job submit --working-dir . -- python jobs/preprocess.py \
        --input s3://bucket/dataset --output s3://bucket/shards/tiny --profile tiny

Inside a Ray Job the driver joins the job's cluster (RAY_ADDRESS is set by `ray job submit`), so
no --address is needed. Flags: `python jobs/preprocess.py --help`. Exit code: 0 all clips done,
3 some clips failed (see report.parquet), 1 the job could not run.
"""

import os
import sys

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from pipelines.preprocess_cli import main_preprocess

    sys.exit(main_preprocess())

"""Batch dubbing as a Ray Job: the same command as `lipsync dub`, for a cluster.

    ray job submit --working-dir . -- python jobs/dub.py \
        --manifest s3://bucket/jobs/manifest.csv --output_dir s3://bucket/jobs/out \
        --profile latentsync-1.5 --checkpoint_dir /models/latentsync-1.5

Inside a Ray Job the driver joins the job's cluster (RAY_ADDRESS is set by `ray job submit`), so
no --address is needed. Flags: `python jobs/dub.py --help`. Exit code: 0 all done, 3 some videos
failed (see results.parquet), 1 the job could not run.
"""

import os
import sys

if __name__ == "__main__":
    # `python jobs/dub.py` puts jobs/ first on sys.path; the packages live one level up (the
    # working dir), unless the runtime_env installed them.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    from pipelines.cli import main_dub

    sys.exit(main_dub())

"""The lip-sync pipeline: one implementation of decode -> face -> align -> denoise -> paste back
-> encode, used by ``lipsync generate``, the batch job and the HTTP server."""

from lipsync.options import GenerateOptions
from lipsync.pipeline.lipsync_pipeline import GenerateResult, LipSyncPipeline

__all__ = ["GenerateOptions", "GenerateResult", "LipSyncPipeline"]

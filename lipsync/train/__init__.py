"""Dataset preparation and training.

Modules (no Ray at import time; Ray is imported inside :mod:`lipsync.train.trainer` and the
``RaySession`` of :mod:`lipsync.train.loop` only):

* :mod:`~lipsync.train.sources`, :mod:`~lipsync.train.prepare`: the preprocessing stage (one clip ->
  Parquet segments), run at scale by ``pipelines/preprocess.py``;
* :mod:`~lipsync.train.data`: shards -> torch batches of windows;
* :mod:`~lipsync.train.recipes`: ``vae``, ``syncnet``, ``unet_stage1``, ``unet_stage2``;
* :mod:`~lipsync.train.loop`: the per-worker loop; :mod:`~lipsync.train.trainer`: ``TorchTrainer``;
* :mod:`~lipsync.train.export`: checkpoint -> inference folder; :mod:`~lipsync.train.cli`: ``lipsync train``.
"""

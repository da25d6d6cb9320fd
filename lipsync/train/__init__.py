"""Dataset preparation and training.

Modules (no Ray; ``pipelines/train.py`` runs the loop on Ray Train and ``pipelines/train_cli.py``
is ``lipsync train``):

* :mod:`~lipsync.train.sources`, :mod:`~lipsync.train.prepare`: the preprocessing stage (one clip ->
  Parquet segments), run at scale by ``pipelines/preprocess.py``;
* :mod:`~lipsync.train.data`: shards -> torch batches of windows;
* :mod:`~lipsync.train.recipes`: ``vae``, ``syncnet``, ``unet_stage1``, ``unet_stage2``;
* :mod:`~lipsync.train.loop`: the per-worker loop;
* :mod:`~lipsync.train.export`: checkpoint -> inference folder.
"""

"""Real media by manifest (``lipsync data``): see ``lipsync.data.kit``. Unrelated to
``lipsync.train.data``, which reads training shards."""

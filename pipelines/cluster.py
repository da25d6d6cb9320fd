"""Joining Ray for the ``lipsync`` subcommands of this package (``dub``, ``preprocess``, ``train``).
Its own module so that their parser modules share it without importing one another."""

from __future__ import annotations


def connect(address: str | None) -> None:
    """Join ``address``, else the local Ray instance if one runs, else start one."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"address": address} if address else {}
    ray.init(**kwargs, log_to_driver=True, logging_level="WARNING")

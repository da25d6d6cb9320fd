"""The model deployment: one ``LipSyncPipeline`` per replica, loaded once, on CPU or GPU.

Inputs arrive as bytes (they travel through Ray's object store, so a replica may run on any node)
and are written to a private temporary folder that is removed when the request ends; the result
comes back as bytes. ``generate`` streams progress events before the final result, and stops the
pipeline at its next frame when the caller cancels (a timeout, a deleted job, a client gone).
Errors come back as data (status + public detail), never as exceptions with server paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from serve.config import ModelSettings
from serve.errors import ApiError, describe
from serve.request import request_options

logger = logging.getLogger("ray.serve")

PROGRESS_EVERY_S = 0.25


class Cancelled(BaseException):
    """Raised inside the pipeline (from its progress callback) when the caller gave up.
    A BaseException so that no ``except Exception`` on the way swallows it."""


@serve.deployment(name="LipSyncModel")
class LipSyncModel:
    def __init__(self, settings: dict):
        import torch

        from lipsync.pipeline import LipSyncPipeline

        self.settings = ModelSettings(**settings)
        threads = self.settings.torch_threads or max(1, int(round(self.settings.num_cpus)))
        torch.set_num_threads(threads)
        device = None if self.settings.device in (None, "auto") else self.settings.device
        dtype = None if self.settings.dtype in (None, "auto") else self.settings.dtype
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            self.pipe = LipSyncPipeline.from_profile(self.settings.profile, self.settings.checkpoint_dir,
                                                     device, dtype)
        self.load_warnings = [str(w.message) for w in caught]
        for message in self.load_warnings:
            logger.warning("lipsync model: %s", message)
        self.device = str(getattr(self.pipe, "device", device or "auto"))
        logger.info("lipsync model: profile %s loaded on %s in %.1f s (%d torch threads)",
                    self.settings.profile, self.device, time.perf_counter() - t0, threads)
        self.work_root = self.settings.work_dir or tempfile.gettempdir()
        os.makedirs(self.work_root, exist_ok=True)
        self.work_prefix = f"lipsync-serve-{os.getpid()}-"
        _remove_dead_work_dirs(self.work_root)
        # One worker per generation the replica admits: a cancelled request whose pipeline is still
        # winding down holds its worker, so the next one waits instead of oversubscribing the CPU.
        self.executor = ThreadPoolExecutor(max_workers=max(1, self.settings.max_ongoing_requests),
                                           thread_name_prefix="lipsync-generate")

    def info(self) -> dict:
        return {"profile": self.settings.profile, "device": self.device, "warnings": self.load_warnings,
                "actor": _actor_name()}

    async def generate(self, request: dict):
        """Async generator: ``{"progress": [done, total]}`` events, then one ``{"result": {...}}``
        (with ``video``: the mp4 bytes) or ``{"error": {"status", "detail", "error"}}``."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def post(event: dict) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        future = loop.run_in_executor(self.executor, self._generate, request, cancel, post)
        try:
            while not future.done() or not events.empty():
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    continue
                yield event
            yield await future
        finally:
            cancel.set()  # the caller went away or we are done: stop the pipeline at its next frame

    def _generate(self, request: dict, cancel: threading.Event, post) -> dict:
        if cancel.is_set():
            return {"error": ApiError(499, "cancelled before it started").to_dict()}
        work = tempfile.mkdtemp(prefix=self.work_prefix, dir=self.work_root)
        names: dict[str, str] = {}
        try:
            paths = {}
            for field, item in request.get("inputs", {}).items():
                path = os.path.join(work, field + item["suffix"])  # never the client's file name
                with open(path, "wb") as f:
                    f.write(item["data"])
                paths[field] = path
                names[path] = field
            output = os.path.join(work, "output.mp4")
            names[output] = "output"
            names[work] = "<tmp>"
            options = request_options(request.get("options", {}), self.settings.batch_size)
            last = [0.0]

            def progress(done: int, total: int) -> None:
                if cancel.is_set():
                    raise Cancelled()
                now = time.monotonic()
                if done >= total or now - last[0] >= PROGRESS_EVERY_S:
                    last[0] = now
                    post({"progress": [int(done), int(total)]})

            result = self.pipe(output, video=paths.get("video"), image=paths.get("image"),
                               audio=paths.get("audio"), text=request.get("text"),
                               lang=request.get("lang") or "en", voice=request.get("voice"),
                               options=options, progress=progress)
            with open(output, "rb") as f:
                data = f.read()
            notes = [*result.notes]
            if result.random_init:
                notes.append("the model's weights are random (untrained): the mouth is regenerated "
                             "but does not follow the speech")
            return {"result": {"video": data, "frames": result.frames, "frames_with_face": result.frames_with_face,
                               "media_seconds": round(result.media_seconds, 3),
                               "elapsed_seconds": round(result.elapsed_seconds, 3),
                               "random_init": bool(result.random_init), "notes": notes}}
        except Cancelled:
            return {"error": ApiError(499, "cancelled").to_dict()}
        except Exception as err:  # every error goes back as data; unexpected ones are logged here
            api = describe(err, names)
            if api.status >= 500:
                logger.exception("lipsync model: generation failed")
            return {"error": api.to_dict()}
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _remove_dead_work_dirs(root: str) -> None:
    """Request folders of replicas that were killed mid-request (their names carry the pid of the
    replica process; a folder whose process is gone is left over)."""
    for name in os.listdir(root):
        parts = name.split("-")
        if not name.startswith("lipsync-serve-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True  # someone else's process
        if not alive:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _actor_name() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_actor_name()
    except Exception:
        return None

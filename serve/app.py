"""The Ray Serve application: a FastAPI ingress (uploads, validation, limits, jobs, web page) in
front of the model deployment (``serve/model.py``).

``build_app(args)`` is the application builder used by ``serve run lipsync/configs/serve.yaml`` and by
``lipsync serve``; ``args`` is the settings tree of ``serve/config.py``.

HTTP surface (OpenAPI docs at ``/docs``):

- ``POST /generate``: multipart ``video`` or ``image``, ``audio`` or ``text`` (+ ``lang``, ``voice``),
  and any generation option of ``lipsync/options.py`` by name (``serve/request.py`` makes the
  fields from the declaration); answers the mp4 (short inputs).
- ``POST /jobs`` (same fields) -> 202 ``{"id": ...}``; ``GET /jobs/{id}`` (status, progress, error,
  the job's resolved ``options``); ``GET /jobs/{id}/result``; ``DELETE /jobs/{id}``.
- ``GET /options`` (the options as declared, with this server's defaults and limits), ``GET /healthz``,
  ``GET /info``; ``GET /`` the web page in ``web`` mode.

Every error is JSON ``{"detail": "...", "error": "<kind>"}`` with a fitting status code.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures of the (pickled)
# ingress class at run time, and string annotations would not resolve there.

import asyncio
import dataclasses
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from lipsync import __version__
from lipsync.options import REQUEST_OPTIONS, as_values
from serve import limits as admission
from serve.access import AccessMiddleware, authorized, configure_access
from serve.config import AppSettings, load_settings, resolve_api_key
from serve.errors import ApiError
from serve.limits import BodyLimitMiddleware, busy_error, configure_body_limits
from serve.model import LipSyncModel
from serve.store import JobStore, new_job_id, valid_job_id
from serve.request import GenerateForm, generate_form, options_document
from serve.validate import check_media, check_options, check_speech, upload_kind

logger = logging.getLogger("ray.serve")

CHUNK = 1 << 20


# -- the FastAPI app ---------------------------------------------------------------------------------
api = FastAPI(
    title="LipSync",
    version=__version__,
    description="Audio-driven lip-sync (visual dubbing). `POST /generate` answers the mp4 for short "
                "inputs; `POST /jobs` queues long ones (poll `GET /jobs/{id}`, then fetch "
                "`GET /jobs/{id}/result`). Errors are JSON: `{\"detail\": ..., \"error\": ...}`.",
)
api.add_middleware(BodyLimitMiddleware)
api.add_middleware(AccessMiddleware)  # added last: the outermost, so a refused request is not read


@api.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError):
    return JSONResponse({"detail": err.detail, "error": err.kind}, status_code=err.status, headers=err.headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException):
    kind = {404: "NotFound", 405: "MethodNotAllowed", 408: "RequestTimeout", 413: "PayloadTooLarge"}.get(
        err.status_code, "HTTPError")
    return JSONResponse({"detail": err.detail, "error": kind}, status_code=err.status_code,
                        headers=getattr(err, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError):
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path", "form")]
        parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
    return JSONResponse({"detail": "; ".join(parts) or "invalid request", "error": "BadRequest"}, status_code=400)


@api.exception_handler(Exception)
async def _internal_error(request: Request, err: Exception):
    logger.exception("lipsync ingress: unhandled error")
    return JSONResponse({"detail": "internal server error", "error": "InternalError"}, status_code=500)


def _given(upload: UploadFile | None) -> bool:
    return upload is not None and (bool(upload.filename) or (upload.size or 0) > 0)


class ModelLost(Exception):
    """The model replica died while working on a request."""


MP4_RESPONSE = {200: {"content": {"video/mp4": {}}, "description": "the lip-synced mp4 (H.264 + AAC)"}}
ERROR_RESPONSES = {code: {"description": text, "content": {"application/json": {}}} for code, text in {
    400: "bad request (missing or conflicting fields, bad option values)",
    413: "upload larger than the limit", 415: "file type not accepted or not a media file",
    422: "unusable media (corrupt, empty, no needed stream, no face, too long) or text",
    503: "busy: too many requests or jobs waiting (see Retry-After)", 504: "time limit reached"}.items()}


async def _save_upload(upload: UploadFile, path: Path) -> None:
    with open(path, "wb") as f:
        while True:
            chunk = await upload.read(CHUNK)
            if not chunk:
                break
            f.write(chunk)


def _model_request(spec: dict, folder: Path) -> dict:
    """The model deployment's request: the spec with each input file's bytes."""
    inputs = {}
    for kind, name in spec["inputs"].items():
        inputs[kind] = {"suffix": os.path.splitext(name)[1], "data": (Path(folder) / name).read_bytes()}
    return {"inputs": inputs, "text": spec.get("text"), "lang": spec.get("lang"), "voice": spec.get("voice"),
            "options": spec.get("options", {})}


def _actor_name() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_actor_name()
    except Exception:
        return None


# Helpers the ingress methods use are defined above the class: @serve.ingress freezes (pickles) the
# FastAPI app, routes and all, when the class is decorated, so later module globals would be missing.
@serve.deployment(name="LipSyncIngress")
@serve.ingress(api)
class LipSyncIngress:
    async def __init__(self, model: DeploymentHandle, settings: dict):
        self.model = model
        self.settings: AppSettings = load_settings(settings)
        self.limits = self.settings.limits
        configure_body_limits(self.limits)
        # build_app resolved the key (flag, config or the deploying shell's $LIPSYNC_API_KEY) to its hash.
        configure_access(self.settings.access, self.settings.access.api_key_sha256
                         or resolve_api_key(self.settings.access))
        self.state_dir = self.settings.resolved_state_dir()
        self.store = JobStore(self.state_dir)
        self.actor = _actor_name()
        self.owner = f"{self.actor or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tmp_root = self.state_dir / "tmp"
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        self.submitting = 0  # POST /jobs between the queue check and the record (counted against max_queued)
        self.running: dict[str, asyncio.Task] = {}
        self.wake = asyncio.Event()
        self.closing = False
        self._clean_tmp()
        self.loop_task = asyncio.get_running_loop().create_task(self._job_loop())
        logger.info("lipsync ingress: mode %s, state dir %s, owner %s", self.settings.mode, self.state_dir,
                    self.owner)

    # -- pages and status ------------------------------------------------------------------------------
    @api.get("/", include_in_schema=False)
    async def index(self):
        if self.settings.mode != "web":
            return {"service": "lipsync", "version": __version__, "docs": "/docs", "health": "/healthz"}
        from serve.page import render_page

        return HTMLResponse(render_page(self.settings))

    @api.get("/examples/{name}", response_class=FileResponse,
             responses={200: {"content": {"video/mp4": {}, "audio/wav": {}}, "description": "the sample file"},
                        404: {"description": "not one of the sample files", "content": {"application/json": {}}}},
             summary="the bundled sample media (the web page's example): face.mp4 or speech.wav")
    async def example(self, name: str):
        # Fixed names mapped to the packaged files: a request never names a path.
        from lipsync.assets import SAMPLE_AUDIO, SAMPLE_VIDEO

        known = {"face.mp4": (SAMPLE_VIDEO, "video/mp4"), "speech.wav": (SAMPLE_AUDIO, "audio/wav")}
        if name not in known:
            raise ApiError(404, f"no example {name[:64]!r}; the examples are {', '.join(known)}", "NotFound")
        path, media_type = known[name]
        return FileResponse(path, media_type=media_type, filename=name, content_disposition_type="inline")

    @api.get("/healthz", summary="health and load of this ingress replica (open without the API key: "
                                 "then only the status)")
    async def healthz(self, request: Request):
        try:
            counts = await asyncio.to_thread(self.store.counts)
        except Exception as err:  # the state dir is gone or locked
            raise ApiError(503, f"job store unavailable: {type(err).__name__}", "Unavailable") from None
        if not authorized(request.scope.get("headers", [])):
            return {"status": "ok"}
        return {"status": "ok", "version": __version__, "mode": self.settings.mode,
                "profile": self.settings.model.profile, "replica": self.actor,
                "pending_requests": admission.ADMISSION["generate"],
                "uploads_in_progress": admission.ADMISSION["uploads"],
                "running_jobs_here": len(self.running), "jobs": counts}

    @api.get("/options", summary="the generation options: as declared, with this server's defaults and limits")
    async def options(self):
        return await asyncio.to_thread(options_document, self.settings)

    @api.get("/info", summary="limits and defaults (what the web page shows)")
    async def info(self):
        lim = self.limits
        return {"version": __version__, "mode": self.settings.mode, "profile": self.settings.model.profile,
                "limits": {"max_upload_mb": lim.max_upload_mb, "max_media_seconds": lim.max_media_seconds,
                           "generate_max_seconds": lim.generate_max_seconds, "max_text_chars": lim.max_text_chars,
                           "max_num_steps": lim.max_num_steps, "video_types": lim.video_types,
                           "image_types": lim.image_types, "audio_types": lim.audio_types},
                "defaults": dataclasses.asdict(self.settings.defaults)}

    # -- synchronous generation ----------------------------------------------------------------------
    @api.post("/generate", response_class=Response, responses={**MP4_RESPONSE, **ERROR_RESPONSES},
              summary="lip-sync a face video or image to speech or text; answers the mp4")
    async def generate(self, form: GenerateForm = Depends(generate_form)):
        if admission.ADMISSION["generate"] >= self.limits.max_pending_requests:
            raise self._busy(f"{admission.ADMISSION['generate']} requests are already being served")
        admission.ADMISSION["generate"] += 1
        work = self.tmp_root / uuid.uuid4().hex
        try:
            work.mkdir(parents=True)
            spec = await self._prepare(form, work, sync=True)
            request = await asyncio.to_thread(_model_request, spec, work)
            timeout = self.limits.request_timeout_s
            try:
                final = await asyncio.wait_for(self._call_model(request), timeout=timeout)
            except asyncio.TimeoutError:
                raise ApiError(504, f"generation did not finish within {timeout:g} s; "
                                    "use POST /jobs for long inputs", "Timeout") from None
            except ModelLost:
                raise self._busy("the model replica stopped while working on this request; try again") from None
            if "error" in final:
                raise ApiError.from_dict(final["error"])
            result = final["result"]
            headers = {"Content-Disposition": 'attachment; filename="lipsync.mp4"',
                       "X-LipSync-Frames": str(result["frames"]),
                       "X-LipSync-Media-Seconds": str(result["media_seconds"]),
                       "X-LipSync-Elapsed-Seconds": str(result["elapsed_seconds"])}
            if result.get("random_init"):
                headers["X-LipSync-Random-Weights"] = "1"
            return Response(content=result["video"], media_type="video/mp4", headers=headers)
        finally:
            admission.ADMISSION["generate"] -= 1
            shutil.rmtree(work, ignore_errors=True)

    # -- jobs ------------------------------------------------------------------------------------------
    @api.post("/jobs", status_code=202, responses=ERROR_RESPONSES,
              summary="queue a lip-sync job (same fields as /generate); answers its id")
    async def submit_job(self, form: GenerateForm = Depends(generate_form)):
        counts = await asyncio.to_thread(self.store.counts)
        active = counts["queued"] + counts["running"] + self.submitting
        if active >= self.settings.jobs.max_queued:
            raise self._busy(f"{active} jobs are already queued or running (the limit is "
                             f"{self.settings.jobs.max_queued})")
        self.submitting += 1  # holds a place in the queue while the inputs are checked
        job_id = new_job_id()
        job_dir = self.store.job_dir(job_id)
        try:
            job_dir.mkdir(parents=True)
            spec = await self._prepare(form, job_dir, sync=False)
            await asyncio.to_thread(self.store.create, job_id, spec)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        finally:
            self.submitting -= 1
        self.wake.set()
        return JSONResponse({"id": job_id, "status": "queued", "status_url": f"/jobs/{job_id}",
                             "result_url": f"/jobs/{job_id}/result"},
                            status_code=202, headers={"Location": f"/jobs/{job_id}"})

    @api.get("/jobs/{job_id}", summary="status, progress (0..1) and error of a job")
    async def job_status(self, job_id: str):
        job = await self._job(job_id)
        return {**job.public(), "options": (job.request or {}).get("options", {})}

    @api.get("/jobs/{job_id}/result", response_class=FileResponse, responses=MP4_RESPONSE,
             summary="the mp4 of a finished job")
    async def job_result(self, job_id: str, download: Annotated[bool, Query()] = False):
        job = await self._job(job_id)
        if job.status == "failed":
            raise ApiError(409, f"job failed: {job.error}", "JobFailed")
        if job.status != "done":
            raise ApiError(409, f"job is {job.status} ({job.progress:.0%}); poll GET /jobs/{job_id}", "NotReady")
        path = self.store.result_path(job_id)
        if not path.is_file():
            raise ApiError(410, "the result file is gone", "Gone")
        return FileResponse(path, media_type="video/mp4", filename=f"lipsync-{job_id}.mp4",
                            content_disposition_type="attachment" if download else "inline")

    @api.delete("/jobs/{job_id}", summary="cancel a job and delete its record and files")
    async def delete_job(self, job_id: str):
        await self._job(job_id)
        task = self.running.get(job_id)
        job = await asyncio.to_thread(self.store.delete, job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id}", "NotFound")
        if task is not None:
            task.cancel()
        # A job running in another replica stops at that runner's next heartbeat.
        return {"id": job_id, "deleted": True, "status": job.status}

    # -- helpers ---------------------------------------------------------------------------------------
    async def _job(self, job_id: str):
        job = await asyncio.to_thread(self.store.get, job_id) if valid_job_id(job_id) else None
        if job is None:
            raise ApiError(404, f"no job {job_id[:64]}", "NotFound")
        return job

    def _busy(self, why: str) -> ApiError:
        return busy_error(why, self.limits)

    async def _prepare(self, form: GenerateForm, folder: Path, sync: bool) -> dict:
        """Check the form, store its files in ``folder`` under server-chosen names, probe them.
        Returns the request spec (JSON-able): input file names, text, options."""
        lim = self.limits
        face_given = [name for name in ("video", "image") if _given(getattr(form, name))]
        if len(face_given) != 1:
            raise ApiError(400, "give a face video (field 'video') or a still image (field 'image')"
                           if not face_given else "give either 'video' or 'image', not both", "BadRequest")
        text = form.text if form.text and form.text.strip() else None
        if _given(form.audio) == (text is not None):
            raise ApiError(400, "give speech as an audio file (field 'audio') or text to speak (field 'text')"
                           if text is None else "give either 'audio' or 'text', not both", "BadRequest")
        check_speech(form.lang, form.voice or None, text, lim)
        options = check_options(form.options, self.settings.defaults.options(), lim)
        uploads = [(face_given[0], getattr(form, face_given[0]))] + ([("audio", form.audio)] if text is None else [])
        inputs, seconds = {}, {}
        for field, upload in uploads:
            kind, suffix = upload_kind(field, upload.filename, upload.content_type, lim)
            name = kind + suffix
            await _save_upload(upload, folder / name)
            seconds[field] = await asyncio.to_thread(check_media, str(folder / name), field, kind, lim)
            inputs[kind] = name
        if sync and "audio" in seconds and seconds["audio"] > lim.generate_max_seconds:
            raise ApiError(422, f"audio: {seconds['audio']:.1f} s of speech; POST /generate takes up to "
                                f"{lim.generate_max_seconds:g} s, use POST /jobs for longer inputs", "MediaTooLong")
        return {"inputs": inputs, "text": text, "lang": form.lang or "en", "voice": form.voice or None,
                "options": as_values(options, REQUEST_OPTIONS), "speech_seconds": seconds.get("audio")}

    async def _call_model(self, request: dict, on_progress=None) -> dict:
        """Run one generation on a model replica; returns its final event (result or error)."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        stream = self.model.options(stream=True).generate.remote(request)
        finished = False
        try:
            async for event in stream:
                if "progress" in event:
                    if on_progress is not None:
                        on_progress(*event["progress"])
                    continue
                finished = True
                return event
            finished = True
            raise ApiError(500, "the model replica returned no result", "InternalError")
        except BackPressureError:
            finished = True
            raise self._busy("too many requests are waiting for the model") from None
        except RayActorError as err:
            finished = True
            raise ModelLost(str(err)) from None
        finally:
            if not finished:
                stream.cancel()

    # -- the job runner --------------------------------------------------------------------------------
    async def _job_loop(self):
        jobs = self.settings.jobs
        last_sweep = last_expire = 0.0
        while not self.closing:
            try:
                now = time.monotonic()
                if now - last_sweep >= jobs.heartbeat_s:
                    last_sweep = now
                    for job_id, status in await asyncio.to_thread(self.store.recover_stale, jobs.stale_after_s,
                                                                  jobs.max_attempts):
                        logger.warning("lipsync jobs: job %s lost its replica; now %s", job_id, status)
                if now - last_expire >= 60.0:
                    last_expire = now
                    await asyncio.to_thread(self._expire)
                while len(self.running) < jobs.concurrency and not self.closing:
                    job = await asyncio.to_thread(self.store.claim, self.owner)
                    if job is None:
                        break
                    task = asyncio.get_running_loop().create_task(self._run_job(job))
                    self.running[job.id] = task
                    task.add_done_callback(lambda _t, i=job.id: (self.running.pop(i, None), self.wake.set()))
            except Exception:
                logger.exception("lipsync jobs: runner loop error")
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=jobs.poll_s)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def _run_job(self, job):
        jobs = self.settings.jobs
        folder = self.store.job_dir(job.id)
        progress = {"done": 0, "total": 0}

        def on_progress(done, total):
            progress["done"], progress["total"] = done, total

        try:
            request = await asyncio.to_thread(_model_request, job.request, folder)
        except FileNotFoundError:
            await asyncio.to_thread(self.store.fail, job.id, self.owner, "the job's input files are gone", 500)
            return
        work = asyncio.ensure_future(asyncio.wait_for(self._call_model(request, on_progress), jobs.timeout_s))
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=jobs.heartbeat_s)
                if done:
                    break
                ours = await asyncio.to_thread(self.store.heartbeat, job.id, self.owner,
                                               progress["done"], progress["total"])
                if not ours:  # deleted, or taken for dead and re-queued: stop working on it
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    await asyncio.to_thread(self._cleanup_if_deleted, job.id)
                    return
            try:
                final = work.result()
            except asyncio.TimeoutError:
                final = {"error": {"status": 504, "detail": f"timed out after {jobs.timeout_s:g} s", "error": "Timeout"}}
            except ApiError as err:
                if err.status == 503:  # back-pressure: wait in the queue again, not an attempt
                    await asyncio.to_thread(self.store.release, job.id, self.owner, None, False)
                    await asyncio.sleep(self.limits.retry_after_s / 4)
                    return
                final = {"error": err.to_dict()}
            except ModelLost:
                note = f"attempt {job.attempts}: the model replica stopped while generating"
                if job.attempts < jobs.max_attempts:
                    await asyncio.to_thread(self.store.release, job.id, self.owner, note + "; re-queued")
                else:
                    await asyncio.to_thread(self.store.fail, job.id, self.owner,
                                            f"interrupted: {note}; giving up after {job.attempts} attempts", 503)
                return
            if "error" in final:
                err = final["error"]
                await asyncio.to_thread(self.store.fail, job.id, self.owner, err["detail"], int(err["status"]))
            else:
                await asyncio.to_thread(self._store_result, job, final["result"])
        except asyncio.CancelledError:
            work.cancel()
            if self.closing:  # replica shutting down: give the job back, it was not its fault
                await asyncio.to_thread(self.store.release, job.id, self.owner,
                                        "its server replica shut down; re-queued", False)
            else:
                await asyncio.to_thread(self._cleanup_if_deleted, job.id)
            raise
        except Exception:
            logger.exception("lipsync jobs: job %s failed", job.id)
            await asyncio.to_thread(self.store.fail, job.id, self.owner, "internal server error", 500)
        finally:
            await asyncio.to_thread(self._drop_inputs, job)

    def _store_result(self, job, result: dict) -> None:
        path = self.store.result_path(job.id)
        part = path.with_suffix(".part")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as f:
            f.write(result.pop("video"))
        os.replace(part, path)
        result["bytes"] = path.stat().st_size
        notes = result.pop("notes", [])
        if not self.store.finish(job.id, self.owner, result, notes):
            self._cleanup_if_deleted(job.id)

    def _drop_inputs(self, job) -> None:
        current = self.store.get(job.id)
        if current is None:
            self._cleanup_if_deleted(job.id)
        elif current.status in ("done", "failed"):
            for name in job.request.get("inputs", {}).values():
                (self.store.job_dir(job.id) / name).unlink(missing_ok=True)

    def _cleanup_if_deleted(self, job_id: str) -> None:
        if self.store.get(job_id) is None:
            shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)

    def _expire(self) -> None:
        self.store.expire(self.settings.jobs.keep_hours * 3600)
        now = time.time()
        for folder in self.store.orphan_dirs():
            if now - folder.stat().st_mtime > 600:
                shutil.rmtree(folder, ignore_errors=True)
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        """Request folders left by a replica that died mid-request (live ones are younger)."""
        horizon = self.limits.request_timeout_s + self.limits.upload_idle_timeout_s + 300
        now = time.time()
        for folder in self.tmp_root.iterdir():
            try:
                if now - folder.stat().st_mtime > horizon:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                pass

    async def __del__(self):
        """Graceful shutdown (redeploy, downscale): jobs running here go back to the queue."""
        self.closing = True
        if getattr(self, "loop_task", None) is not None:
            self.loop_task.cancel()
        running = list(getattr(self, "running", {}).values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)


# -- the application builder -------------------------------------------------------------------------
def resolve_num_gpus(value) -> float:
    """``auto``: one GPU per model replica when the Ray cluster has GPUs, else none. An explicit GPU
    request on a cluster without GPUs fails now (Ray would otherwise wait for one forever)."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else None
    if value in (None, "auto"):
        return 1.0 if cluster_gpus else 0.0
    value = float(value)
    if value > 0 and cluster_gpus == 0:
        raise ValueError(f"model.num_gpus is {value:g} but the Ray cluster has no GPU; set model.num_gpus to 0 "
                         "(or auto) to run on CPU, or start Ray on a machine with a GPU")
    return value


def build_app(args: dict | None = None):
    """Application builder: ``serve run serve.app:build_app`` or ``import_path`` in a Serve config."""
    settings = load_settings(args)
    m = settings.model
    num_gpus = resolve_num_gpus(m.num_gpus)
    model_options = dict(ray_actor_options={"num_cpus": m.num_cpus, "num_gpus": num_gpus},
                         max_ongoing_requests=m.max_ongoing_requests, max_queued_requests=m.max_queued_requests,
                         health_check_period_s=m.health_check_period_s)
    if m.autoscaling:
        model_options["autoscaling_config"] = dict(m.autoscaling)
    else:
        model_options["num_replicas"] = m.num_replicas
    model_settings = dataclasses.asdict(m)
    model_settings["num_gpus"] = num_gpus
    if num_gpus == 0 and m.device in (None, "auto"):
        model_settings["device"] = "cpu"
    model = LipSyncModel.options(**model_options).bind(model_settings)
    settings.state_dir = str(settings.resolved_state_dir())
    # Only the key's hash goes into the deployment's arguments (which Serve keeps and shows).
    settings.access.api_key_sha256 = resolve_api_key(settings.access)
    settings.access.api_key = None
    ing = settings.ingress
    return LipSyncIngress.options(
        num_replicas=ing.num_replicas, ray_actor_options={"num_cpus": ing.num_cpus},
        max_ongoing_requests=ing.max_ongoing_requests, health_check_period_s=ing.health_check_period_s,
        max_queued_requests=ing.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": settings.limits.retry_after_s},
    ).bind(model, settings.to_dict())

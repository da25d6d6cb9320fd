"""The web page served at ``/`` in web mode: one HTML document with vanilla JS, no build step and
no external resources (it works offline). What a Gradio demo gives, without Gradio:

- previews of the chosen face video / image and speech (``URL.createObjectURL``);
- every request option of ``lipsync.options`` under "高级选项 / Advanced", rendered from the
  declaration with the server's effective defaults, the same help text as ``--help`` and ``/docs``;
  only the options the user changed are sent;
- the bundled sample (``GET /examples/face.mp4``, ``/examples/speech.wav``) as a one-click example;
- the jobs API: ``POST /jobs``, a progress bar from ``GET /jobs/{id}``, then the result from
  ``GET /jobs/{id}/result`` in a ``<video>`` with a download link.

Kept as a Python string (not a static file) so it ships with the package whatever the install."""

from __future__ import annotations

import html
import json
from dataclasses import MISSING
from typing import Any

from lipsync.options import REQUEST_OPTIONS, Option

from serve.config import AppSettings

# The sample media the example button loads (served by GET /examples/{name}).
EXAMPLE_FILES = {"face.mp4": "video/mp4", "speech.wav": "audio/wav"}

# Chinese names shown next to each option's own name (the help text is the declaration's).
OPTION_LABELS_ZH = {
    "num_steps": "扩散步数", "guidance_scale": "音频引导强度", "seed": "随机种子", "face": "人脸选择",
    "loop": "循环方式", "silence_gating": "静音时闭嘴", "overlap": "窗口重叠帧数", "deepcache": "DeepCache 间隔",
}

PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>LipSync 唇形同步</title>
<style>
  :root { --fg: #1d2330; --muted: #5b6475; --line: #d8dde6; --accent: #2f6fed; --bad: #b3261e; --bg: #f6f7fa; }
  * { box-sizing: border-box; }
  [hidden] { display: none !important; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", sans-serif;
         color: var(--fg); background: var(--bg); }
  header { padding: 18px 24px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 20px; }
  header p { margin: 4px 0 0; color: var(--muted); }
  main { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(300px, 1fr); gap: 20px;
         padding: 20px 24px; max-width: 1200px; margin: 0 auto; align-items: start; }
  @media (max-width: 800px) { main { grid-template-columns: 1fr; } }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; }
  h2 { font-size: 16px; margin: 0 0 12px; }
  fieldset { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 14px; padding: 10px 12px; }
  legend { font-weight: 600; padding: 0 4px; }
  label { display: block; margin: 6px 0; }
  .hint { color: var(--muted); font-size: 13px; }
  textarea { width: 100%; min-height: 70px; font: inherit; padding: 6px; }
  select, input[type=number], input[type=text] { font: inherit; padding: 3px 6px; }
  .row { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
  button { font: inherit; font-weight: 600; color: #fff; background: var(--accent); border: 0; border-radius: 6px;
           padding: 10px 18px; cursor: pointer; }
  button.secondary { color: var(--accent); background: #eef3fe; border: 1px solid #c9d8fb; padding: 6px 12px;
                     font-weight: 500; }
  button:disabled { opacity: .55; cursor: default; }
  .examples { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; margin: 0 0 14px; padding: 8px 10px;
              background: #f3f6fc; border: 1px dashed #c9d8fb; border-radius: 6px; }
  .preview { margin-top: 8px; }
  .preview video, .preview img { display: block; max-width: 100%; max-height: 220px; border-radius: 6px;
                                 background: #000; }
  .preview audio { width: 100%; }
  details#advanced { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 14px; padding: 6px 12px; }
  details#advanced summary { font-weight: 600; cursor: pointer; padding: 4px 0; }
  .options { display: grid; grid-template-columns: 1fr 1fr; gap: 4px 16px; margin: 6px 0; }
  @media (max-width: 1000px) { .options { grid-template-columns: 1fr; } }
  .opt { padding: 6px 0; border-top: 1px solid #eef0f4; }
  .opt label { margin: 0 0 3px; font-weight: 600; }
  .opt code { font-weight: 400; color: var(--muted); }
  .opt input[type=number], .opt input[type=text], .opt select { width: 100%; }
  .opt input[type=checkbox] { transform: scale(1.2); margin: 4px; }
  .progress { display: flex; align-items: center; gap: 8px; }
  progress { flex: 1; height: 14px; }
  #pct { min-width: 3.5em; text-align: right; font-variant-numeric: tabular-nums; }
  #status { margin: 8px 0; min-height: 1.5em; }
  #error { display: none; color: var(--bad); background: #fdecea; border: 1px solid #f3c1bc; border-radius: 6px;
           padding: 8px 10px; margin: 10px 0; white-space: pre-wrap; }
  #video { width: 100%; max-height: 60vh; background: #000; border-radius: 6px; }
  #result { display: none; }
  #notes { color: var(--muted); font-size: 13px; }
  .links { display: flex; gap: 16px; align-items: center; margin-top: 8px; flex-wrap: wrap; }
  a.download { font-weight: 600; }
</style>
</head>
<body>
<header>
  <h1>LipSync 唇形同步</h1>
  <p>上传人脸视频或图片，上传音频或输入文本，生成口型同步的视频。
     Upload a face video or image and speech (or type text); get a lip-synced video.</p>
</header>
<main>
<section>
  <h2>输入 / Input</h2>
  <div class="examples">
    <button id="example" class="secondary" type="button">使用示例 / Use the example</button>
    <span class="hint">自带样例 / bundled sample: face.mp4 + speech.wav</span>
  </div>
  <form id="form" autocomplete="off" novalidate>
    <fieldset id="key_box" hidden>
      <legend>API 密钥 / API key</legend>
      <input id="api_key" type="password" autocomplete="off" spellcheck="false" style="width:100%"
             placeholder="本服务器需要 API 密钥 / this server requires an API key">
      <div class="hint">仅保存在本标签页 / kept in this browser tab only (sessionStorage), sent as
        <code>X-API-Key</code>.</div>
    </fieldset>
    <fieldset>
      <legend>人脸视频或图片 / Face video or image</legend>
      <input id="face" name="face_file" type="file" accept="__FACE_ACCEPT__">
      <div class="hint">__FACE_HINT__</div>
      <div class="preview" id="face_preview" hidden>
        <video id="face_video" controls muted playsinline preload="metadata" hidden></video>
        <img id="face_image" alt="人脸预览 / face preview" hidden>
      </div>
    </fieldset>
    <fieldset>
      <legend>语音 / Speech</legend>
      <label><input type="radio" name="speech" value="audio" checked> 上传音频 / Upload audio</label>
      <input id="audio" type="file" accept="__AUDIO_ACCEPT__">
      <div class="preview" id="audio_preview" hidden><audio id="audio_player" controls preload="metadata"></audio></div>
      <label><input type="radio" name="speech" value="text"> 输入文本 / Type text</label>
      <textarea id="text" maxlength="__MAX_TEXT__" placeholder="你好，欢迎使用唇形同步。 / Hello, welcome."></textarea>
      <label class="row">语言 / Language
        <select id="lang">
          <option value="zh">中文 (zh)</option><option value="en" selected>English (en)</option>
          <option value="es">Español (es)</option><option value="fr">Français (fr)</option>
          <option value="de">Deutsch (de)</option><option value="ja">日本語 (ja)</option>
          <option value="ko">한국어 (ko)</option><option value="pt">Português (pt)</option>
          <option value="ru">Русский (ru)</option><option value="it">Italiano (it)</option>
        </select>
      </label>
    </fieldset>
    <details id="advanced">
      <summary>高级选项 / Advanced options</summary>
      <div class="hint">留空即默认 / empty = the server's default (shown in grey). Only the options you change are
        sent. 与 <code>lipsync generate --help</code> 和 <a href="/docs">/docs</a> 相同 / the same options as
        <code>--help</code> and <code>/docs</code>.</div>
      <div class="options">
__ADVANCED__
      </div>
      <button id="reset_options" class="secondary" type="button">恢复默认 / Reset to defaults</button>
    </details>
    <div class="hint" style="margin-bottom:10px">最大上传 / max upload __MAX_MB__ MB,
      媒体最长 / media up to __MAX_SECONDS__ s. 更多步数质量更高但更慢 / more steps: better but slower.</div>
    <button id="generate" type="submit">生成同步视频 / Generate</button>
  </form>
</section>
<section>
  <h2>结果 / Result</h2>
  <div id="status" class="hint">等待输入 / waiting for input</div>
  <div class="progress" id="progress_box" hidden>
    <progress id="progress" max="1" value="0"></progress><span id="pct">0%</span>
  </div>
  <div id="error" role="alert"></div>
  <div id="result">
    <video id="video" controls playsinline preload="auto"></video>
    <div class="links">
      <a id="download" class="download" download="lipsync.mp4" href="#">下载视频 / Download mp4</a>
      <a id="job_link" class="hint" href="#" target="_blank" rel="noopener">任务记录 / job record</a>
    </div>
    <div id="notes"></div>
  </div>
</section>
</main>
<script>
"use strict";
const CONFIG = __CONFIG__;
const $ = (id) => document.getElementById(id);
const optionInputs = () => Array.from(document.querySelectorAll("[data-option]"));

// -- the API key (when the server asks for one) ---------------------------------------------------
if (CONFIG.api_key_required) {
  $("key_box").hidden = false;
  $("api_key").value = sessionStorage.getItem("lipsync_api_key") || "";
  $("api_key").addEventListener("change", () => sessionStorage.setItem("lipsync_api_key", $("api_key").value.trim()));
}
function apiFetch(url, options) {
  const opts = Object.assign({}, options || {});
  const key = CONFIG.api_key_required ? $("api_key").value.trim() : "";
  if (key) opts.headers = Object.assign({}, opts.headers || {}, {"X-API-Key": key});
  return fetch(url, opts);
}

function speechMode() { return document.querySelector('input[name=speech]:checked').value; }
$("text").addEventListener("input", () => {
  if ($("text").value.trim()) document.querySelector('input[name=speech][value=text]').checked = true;
});

function suffixOf(name) { const i = name.lastIndexOf("."); return i < 0 ? "" : name.slice(i).toLowerCase(); }
function stemOf(name) { const i = name.lastIndexOf("."); return (i < 0 ? name : name.slice(0, i)) || "lipsync"; }
function isImage(file) {
  return (file.type || "").startsWith("image/") || CONFIG.image_types.includes(suffixOf(file.name));
}

// -- previews ------------------------------------------------------------------------------------
const previewUrls = {};
function previewUrl(key, file) {
  if (previewUrls[key]) URL.revokeObjectURL(previewUrls[key]);
  previewUrls[key] = file ? URL.createObjectURL(file) : null;
  return previewUrls[key];
}
function showFacePreview() {
  const file = $("face").files[0], video = $("face_video"), image = $("face_image");
  const url = previewUrl("face", file);
  $("face_preview").hidden = !file;
  const still = !!file && isImage(file);
  video.hidden = !file || still; image.hidden = !still;
  if (still) { image.src = url; video.removeAttribute("src"); }
  else if (file) { video.src = url; image.removeAttribute("src"); }
  video.load();
}
function showAudioPreview() {
  const file = $("audio").files[0], player = $("audio_player");
  const url = previewUrl("audio", file);
  $("audio_preview").hidden = !file;
  if (file) { player.src = url; document.querySelector('input[name=speech][value=audio]').checked = true; }
  else player.removeAttribute("src");
  player.load();
}
$("face").addEventListener("change", showFacePreview);
$("audio").addEventListener("change", showAudioPreview);

// -- the one-click example -----------------------------------------------------------------------
function putFile(input, file) {
  const dt = new DataTransfer();
  dt.items.add(file);
  input.files = dt.files;
  input.dispatchEvent(new Event("change", {bubbles: true}));
}
$("example").addEventListener("click", async () => {
  const button = $("example");
  button.disabled = true;
  showError("");
  try {
    const files = await Promise.all(CONFIG.examples.map(async ([name, type]) => {
      const r = await apiFetch("/examples/" + name);
      if (!r.ok) throw new Error(await errorText(r));
      return new File([await r.blob()], name, {type});
    }));
    putFile($("face"), files[0]);
    putFile($("audio"), files[1]);
    setStatus("示例已载入 / example loaded: " + files.map((f) => f.name).join(" + "));
  } catch (e) {
    showError("示例载入失败 / could not load the example: " + (e.message || e));
  } finally {
    button.disabled = false;
  }
});

// -- advanced options ----------------------------------------------------------------------------
function optionChanged(input) {
  if (input.type === "checkbox") return input.checked !== input.defaultChecked;
  if (input.tagName === "SELECT") return input.value !== input.dataset.default;
  return input.value.trim() !== "";
}
function optionValue(input) {
  return input.type === "checkbox" ? (input.checked ? "true" : "false") : input.value.trim();
}
function changedOptions() {
  return optionInputs().filter(optionChanged).map((input) => [input.dataset.option, optionValue(input)]);
}
$("reset_options").addEventListener("click", () => {
  for (const input of optionInputs()) {
    if (input.type === "checkbox") input.checked = input.defaultChecked;
    else if (input.tagName === "SELECT") input.value = input.dataset.default;
    else input.value = input.defaultValue;
  }
});

// -- status, progress, errors --------------------------------------------------------------------
function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.style.display = message ? "block" : "none";
}
function setStatus(text) { $("status").textContent = text; }
function setProgress(value) {
  const bar = $("progress");
  if (value === null) { bar.removeAttribute("value"); $("pct").textContent = "…"; return; }
  bar.value = value;
  $("pct").textContent = Math.round(100 * value) + "%";
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.detail) return (typeof body.detail === "string") ? body.detail : JSON.stringify(body.detail);
  } catch (e) { /* not JSON */ }
  return "HTTP " + response.status + " " + response.statusText;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function pollJob(id, started) {
  for (;;) {
    let r;
    try { r = await apiFetch("/jobs/" + id, {cache: "no-store"}); }
    catch (e) { setStatus("连接中断，重试中 / connection lost, retrying..."); await sleep(2000); continue; }
    if (!r.ok) throw new Error(await errorText(r));
    const job = await r.json();
    if (job.status === "done") return job;
    if (job.status === "failed") throw new Error(job.error || "failed");
    const secs = Math.round((Date.now() - started) / 1000) + " s";
    if (job.status === "queued") {
      setStatus("排队中 / queued" + (job.attempts ? " (retry " + job.attempts + ")" : "") + " · " + secs);
      setProgress(null);
    } else {
      setProgress(job.progress || 0);
      setStatus("生成中 / generating: " + Math.round(100 * (job.progress || 0)) + "% (" + job.frames_done + "/" +
                (job.frames_total || "?") + " frames) · " + secs);
    }
    await sleep(500);
  }
}

// -- submit --------------------------------------------------------------------------------------
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const face = $("face").files[0];
  if (!face) { showError("请选择人脸视频或图片 / choose a face video or image"); return; }
  for (const input of optionInputs()) {
    if (!input.checkValidity()) {
      $("advanced").open = true;
      input.focus();
      showError(input.dataset.option + ": " + input.validationMessage);
      return;
    }
  }
  const form = new FormData();
  form.append(isImage(face) ? "image" : "video", face, face.name);
  if (speechMode() === "text") {
    const text = $("text").value.trim();
    if (!text) { showError("请输入文本 / type the text to speak"); return; }
    form.append("text", text);
    form.append("lang", $("lang").value);
  } else {
    const audio = $("audio").files[0];
    if (!audio) { showError("请选择音频文件或输入文本 / choose an audio file or type text"); return; }
    form.append("audio", audio, audio.name);
  }
  for (const [name, value] of changedOptions()) form.append(name, value);

  const button = $("generate");
  button.disabled = true;
  $("result").style.display = "none";
  $("progress_box").hidden = false;
  setProgress(0);
  setStatus("上传中 / uploading...");
  const started = Date.now();
  try {
    const r = await apiFetch("/jobs", {method: "POST", body: form});
    if (!r.ok) throw new Error(await errorText(r));
    const {id} = await r.json();
    $("result").dataset.job = id;
    setStatus("已提交 / submitted: job " + id.slice(0, 8));
    const job = await pollJob(id, started);
    let url = "/jobs/" + id + "/result", downloadUrl = url + "?download=true";
    if (CONFIG.api_key_required) {  // a <video> cannot send the key: fetch the mp4 with it, play it locally
      const res = await apiFetch(url);
      if (!res.ok) throw new Error(await errorText(res));
      if (previewUrls.result) URL.revokeObjectURL(previewUrls.result);
      url = downloadUrl = previewUrls.result = URL.createObjectURL(await res.blob());
    }
    const video = $("video");
    video.src = url;
    video.load();
    const download = $("download");
    download.href = downloadUrl;
    download.download = "lipsync-" + stemOf(face.name) + "-" + id.slice(0, 8) + ".mp4";
    $("job_link").href = "/jobs/" + id;
    $("job_link").hidden = !!CONFIG.api_key_required;  // a plain link cannot send the key
    $("notes").textContent = (job.notes || []).join(" · ");
    $("result").style.display = "block";
    setProgress(1);
    setStatus("完成 / done: " + job.frames + " frames, " + job.media_seconds + " s of video in " +
              Math.round(job.elapsed_seconds) + " s");
  } catch (e) {
    $("progress_box").hidden = true;
    setStatus("失败 / failed");
    showError(e.message || String(e));
  } finally {
    button.disabled = false;
  }
});
</script>
</body>
</html>
"""


def server_defaults(settings: AppSettings) -> dict[str, Any]:
    """Each request option's default on this server: the configured ``defaults`` where they name
    the option, else the declared default."""
    out = {}
    for opt in REQUEST_OPTIONS:
        value = MISSING
        for key in (opt.name, opt.attr):
            value = getattr(settings.defaults, key, MISSING)
            if value is not MISSING:
                break
        out[opt.name] = opt.default if value is MISSING else value
    return out


def web_num_steps(settings: AppSettings) -> int | None:
    """The step count the page starts from (``defaults.web_num_steps``, within the limit); None: the
    page starts empty, so a job gets what the CLI and the API give (the server's default)."""
    steps = getattr(settings.defaults, "web_num_steps", None)
    return None if steps is None else max(1, min(int(steps), settings.limits.max_num_steps))


def _help_text(opt: Option, default: Any) -> str:
    """The help as ``--help`` and ``/docs`` say it: the declaration's help and the default."""
    if hasattr(opt, "help_text"):
        return opt.help_text(default)
    shown = opt.default_text if default == opt.default else str(default)
    return f"{opt.help} (default: {shown})"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _option_html(opt: Option, default: Any, settings: AppSettings) -> str:
    """One option's label, input and description. Inputs carry ``data-option`` (the form field)."""
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    ident = f"opt-{opt.name}"
    zh = OPTION_LABELS_ZH.get(opt.name)
    title = f"{esc(zh)} / <code>{esc(opt.name)}</code>" if zh else f"<code>{esc(opt.name)}</code>"
    common = f'id="{ident}" name="{esc(opt.name)}" data-option="{esc(opt.name)}"'
    default_text = opt.value_text(default) if hasattr(opt, "value_text") else (
        opt.default_text if default == opt.default else str(default))
    if opt.kind in ("int", "float"):
        attrs = [common, 'type="number"', f'step="{"1" if opt.kind == "int" else "any"}"',
                 f'placeholder="{esc(default_text)}"']
        lo, hi = opt.minimum, opt.maximum
        if opt.name == "num_steps":
            hi = min(hi, settings.limits.max_num_steps) if hi is not None else settings.limits.max_num_steps
        if lo is not None:
            attrs.append(f'min="{_num(lo)}"')
        if hi is not None:
            attrs.append(f'max="{_num(hi)}"')
        if opt.name == "num_steps" and web_num_steps(settings) is not None:  # a deployment's quicker start
            attrs.append(f'value="{web_num_steps(settings)}"')
        control = f"<input {' '.join(attrs)}>"
    elif opt.kind == "bool":
        control = f'<input {common} type="checkbox" value="true"{" checked" if default else ""}>'
    elif opt.kind == "choice":
        items = "".join(f'<option value="{esc(c)}"{" selected" if c == default else ""}>'
                        f'{esc(c)}{" (默认 / default)" if c == default else ""}</option>' for c in opt.choices)
        if default is None or default not in opt.choices:  # e.g. "the profile's": an empty choice, not sent
            items = f'<option value="" selected>{esc(default_text)} (默认 / default)</option>' + items
            default = ""
        control = f'<select {common} data-default="{esc(default)}">{items}</select>'
    else:  # face, or any text-valued option
        control = f'<input {common} type="text" placeholder="{esc(default_text)}" spellcheck="false">'
    note = ""
    if opt.name == "num_steps" and web_num_steps(settings) is not None:
        note = (f" 网页初始值 / this page starts at {web_num_steps(settings)}; "
                "清空即服务器默认 / clear it for the server's default.")
    return (f'        <div class="opt"><label for="{ident}">{title}</label>{control}'
            f'<div class="hint">{esc(_help_text(opt, default))}{esc(note)}</div></div>')


def advanced_html(settings: AppSettings) -> str:
    defaults = server_defaults(settings)
    return "\n".join(_option_html(opt, defaults[opt.name], settings) for opt in REQUEST_OPTIONS)


def render_page(settings: AppSettings, api_key_required: bool | None = None) -> str:
    """The page; with ``api_key_required`` (default: whether this process has a key configured,
    ``serve.access``) it asks for the key and sends it with every request."""
    from serve.access import key_required

    lim = settings.limits
    face_types = [*lim.video_types, *lim.image_types]
    config = {"image_types": lim.image_types, "max_upload_mb": lim.max_upload_mb,
              "examples": list(EXAMPLE_FILES.items()),
              "api_key_required": key_required() if api_key_required is None else bool(api_key_required)}
    values = {
        "__FACE_ACCEPT__": ",".join(["video/*", "image/*", *face_types]),
        "__FACE_HINT__": html.escape(" ".join(face_types)),
        "__AUDIO_ACCEPT__": ",".join(["audio/*", *lim.audio_types, *lim.video_types]),
        "__MAX_TEXT__": str(lim.max_text_chars),
        "__MAX_MB__": f"{lim.max_upload_mb:g}",
        "__MAX_SECONDS__": f"{lim.max_media_seconds:g}",
        "__ADVANCED__": advanced_html(settings),
        "__CONFIG__": json.dumps(config).replace("</", "<\\/"),
    }
    raw = ("__CONFIG__", "__FACE_HINT__", "__ADVANCED__")
    page = PAGE
    for key, value in values.items():
        page = page.replace(key, value if key in raw else html.escape(value, quote=True))
    return page

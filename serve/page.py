"""The web page served at ``/`` in web mode: one HTML document with vanilla JS, no build step and
no external resources (it works offline). It drives the jobs API: ``POST /jobs``, polls
``GET /jobs/{id}`` for progress, then plays ``GET /jobs/{id}/result`` in a ``<video>`` element.

Kept as a Python string (not a static file) so it ships with the package whatever the install."""

from __future__ import annotations

import html
import json

from serve.config import AppSettings

PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>LipSync 唇形同步</title>
<style>
  :root { --fg: #1d2330; --muted: #5b6475; --line: #d8dde6; --accent: #2f6fed; --bad: #b3261e; --bg: #f6f7fa; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", sans-serif;
         color: var(--fg); background: var(--bg); }
  header { padding: 18px 24px; background: #fff; border-bottom: 1px solid var(--line); }
  header h1 { margin: 0; font-size: 20px; }
  header p { margin: 4px 0 0; color: var(--muted); }
  main { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(300px, 1fr); gap: 20px;
         padding: 20px 24px; max-width: 1200px; margin: 0 auto; }
  @media (max-width: 800px) { main { grid-template-columns: 1fr; } }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px; }
  h2 { font-size: 16px; margin: 0 0 12px; }
  fieldset { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 14px; padding: 10px 12px; }
  legend { font-weight: 600; padding: 0 4px; }
  label { display: block; margin: 6px 0; }
  .hint { color: var(--muted); font-size: 13px; }
  textarea { width: 100%; min-height: 70px; font: inherit; padding: 6px; }
  select, input[type=number] { font: inherit; padding: 3px 6px; }
  .row { display: flex; align-items: center; gap: 10px; flex-wrap: wrap; }
  input[type=range] { flex: 1; min-width: 160px; }
  button { font: inherit; font-weight: 600; color: #fff; background: var(--accent); border: 0; border-radius: 6px;
           padding: 10px 18px; cursor: pointer; }
  button:disabled { opacity: .55; cursor: default; }
  progress { width: 100%; height: 14px; }
  #status { margin: 8px 0; min-height: 1.5em; }
  #error { display: none; color: var(--bad); background: #fdecea; border: 1px solid #f3c1bc; border-radius: 6px;
           padding: 8px 10px; margin: 10px 0; white-space: pre-wrap; }
  video { width: 100%; max-height: 60vh; background: #000; border-radius: 6px; }
  #result { display: none; }
  #notes { color: var(--muted); font-size: 13px; }
  a.download { display: inline-block; margin-top: 8px; }
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
  <form id="form" autocomplete="off">
    <fieldset>
      <legend>人脸视频或图片 / Face video or image</legend>
      <input id="face" name="face_file" type="file" accept="__FACE_ACCEPT__">
      <div class="hint">__FACE_HINT__</div>
    </fieldset>
    <fieldset>
      <legend>语音 / Speech</legend>
      <label><input type="radio" name="speech" value="audio" checked> 上传音频 / Upload audio</label>
      <input id="audio" type="file" accept="__AUDIO_ACCEPT__">
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
    <fieldset>
      <legend>设置 / Settings</legend>
      <label class="row">扩散步数 / Steps
        <input id="steps" type="range" min="1" max="__MAX_STEPS__" value="__STEPS__">
        <output id="steps_out">__STEPS__</output>
      </label>
      <label class="row">随机种子 / Seed <input id="seed" type="number" min="0" value="__SEED__" style="width:9em"></label>
      <div class="hint">更多步数质量更高但更慢 / more steps: better but slower.
        Max upload __MAX_MB__ MB, media up to __MAX_SECONDS__ s.</div>
    </fieldset>
    <button id="generate" type="submit">生成同步视频 / Generate</button>
  </form>
</section>
<section>
  <h2>结果 / Result</h2>
  <div id="status" class="hint">等待输入 / waiting for input</div>
  <progress id="progress" max="1" value="0" hidden></progress>
  <div id="error" role="alert"></div>
  <div id="result">
    <video id="video" controls playsinline preload="auto"></video>
    <div><a id="download" class="download" download="lipsync.mp4" href="#">下载视频 / Download mp4</a></div>
    <div id="notes"></div>
  </div>
</section>
</main>
<script>
"use strict";
const CONFIG = __CONFIG__;
const $ = (id) => document.getElementById(id);
const steps = $("steps");
steps.addEventListener("input", () => { $("steps_out").textContent = steps.value; });

function speechMode() { return document.querySelector('input[name=speech]:checked').value; }
$("text").addEventListener("input", () => {
  if ($("text").value.trim()) document.querySelector('input[name=speech][value=text]').checked = true;
});
$("audio").addEventListener("change", () => {
  if ($("audio").files.length) document.querySelector('input[name=speech][value=audio]').checked = true;
});

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.style.display = message ? "block" : "none";
}
function setStatus(text) { $("status").textContent = text; }
function suffixOf(name) { const i = name.lastIndexOf("."); return i < 0 ? "" : name.slice(i).toLowerCase(); }

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.detail) return (typeof body.detail === "string") ? body.detail : JSON.stringify(body.detail);
  } catch (e) { /* not JSON */ }
  return "HTTP " + response.status + " " + response.statusText;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function pollJob(id) {
  const bar = $("progress");
  for (;;) {
    let r;
    try { r = await fetch("/jobs/" + id, {cache: "no-store"}); }
    catch (e) { setStatus("连接中断，重试中 / connection lost, retrying..."); await sleep(2000); continue; }
    if (!r.ok) throw new Error(await errorText(r));
    const job = await r.json();
    if (job.status === "done") return job;
    if (job.status === "failed") throw new Error(job.error || "failed");
    if (job.status === "queued") {
      setStatus("排队中 / queued" + (job.attempts ? " (retry " + job.attempts + ")" : ""));
      bar.removeAttribute("value");
    } else {
      const pct = Math.round(100 * job.progress);
      bar.value = job.progress;
      setStatus("生成中 / generating: " + pct + "% (" + job.frames_done + "/" + (job.frames_total || "?") + " frames)");
    }
    await sleep(500);
  }
}

$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const face = $("face").files[0];
  if (!face) { showError("请选择人脸视频或图片 / choose a face video or image"); return; }
  const form = new FormData();
  const isImage = (face.type || "").startsWith("image/") || CONFIG.image_types.includes(suffixOf(face.name));
  form.append(isImage ? "image" : "video", face, face.name);
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
  form.append("num_steps", steps.value);
  if ($("seed").value !== "") form.append("seed", $("seed").value);

  const button = $("generate");
  button.disabled = true;
  $("result").style.display = "none";
  const bar = $("progress");
  bar.hidden = false; bar.value = 0;
  setStatus("上传中 / uploading...");
  try {
    const r = await fetch("/jobs", {method: "POST", body: form});
    if (!r.ok) throw new Error(await errorText(r));
    const {id} = await r.json();
    const job = await pollJob(id);
    const url = "/jobs/" + id + "/result";
    const video = $("video");
    video.src = url;
    video.load();
    $("download").href = url + "?download=true";
    $("notes").textContent = (job.notes || []).join(" · ");
    $("result").style.display = "block";
    bar.value = 1;
    setStatus("完成 / done: " + job.frames + " frames, " + job.media_seconds + " s of video in " +
              Math.round(job.elapsed_seconds) + " s");
  } catch (e) {
    bar.hidden = true;
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


def render_page(settings: AppSettings) -> str:
    lim, d = settings.limits, settings.defaults
    steps = max(1, min(d.web_num_steps or 10, lim.max_num_steps))
    face_types = [*lim.video_types, *lim.image_types]
    config = {"image_types": lim.image_types, "max_upload_mb": lim.max_upload_mb}
    values = {
        "__FACE_ACCEPT__": ",".join(["video/*", "image/*", *face_types]),
        "__FACE_HINT__": html.escape(" ".join(face_types)),
        "__AUDIO_ACCEPT__": ",".join(["audio/*", *lim.audio_types, *lim.video_types]),
        "__MAX_TEXT__": str(lim.max_text_chars),
        "__MAX_STEPS__": str(lim.max_num_steps),
        "__STEPS__": str(steps),
        "__SEED__": str(d.seed),
        "__MAX_MB__": f"{lim.max_upload_mb:g}",
        "__MAX_SECONDS__": f"{lim.max_media_seconds:g}",
        "__CONFIG__": json.dumps(config).replace("</", "<\\/"),
    }
    page = PAGE
    for key, value in values.items():
        page = page.replace(key, html.escape(value, quote=True) if key not in ("__CONFIG__", "__FACE_HINT__") else value)
    return page

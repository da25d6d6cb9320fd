"""The web page in a real browser: headless Chromium driven by selenium loads the page, checks the
advanced section lists every request option, clicks the one-click example (the bundled sample),
sets options in the advanced section, clicks "生成同步视频 / Generate", follows the progress and
checks that the result plays in the page's <video> element and downloads as an mp4. Screenshots:
the test's temp dir, /tmp/serve_screenshot.png and /tmp/webpage.png.

Needs Debian's ``chromium`` + ``chromium-driver`` (installed here with apt-get when missing and
running as root; skipped with the reason otherwise) and the ``selenium`` package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
pytest.importorskip("ray.serve")

from ray_fixtures import ray_session  # noqa: E402,F401  (the session's Ray instance)
from serve_helpers import deploy, make_media, serve_port, settings_for_test, undeploy  # noqa: E402,F401

APP = "lipsync-test-web"
SCREENSHOT_COPIES = ("/tmp/serve_screenshot.png", "/tmp/webpage.png")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000"]


def _browser_binaries():
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


@pytest.fixture(scope="session")
def chromium():
    """Paths of (chromium, chromedriver), installing Debian's packages when missing (as root)."""
    browser, driver = _browser_binaries()
    if not (browser and driver):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium + chromium-driver are not installed and cannot be installed "
                        "(needs root and apt-get): apt-get install -y chromium chromium-driver")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        try:
            subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300, env=env)
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
                           check=True, capture_output=True, timeout=600, env=env)
            # A small CJK font so the page's Chinese labels render in the screenshot (best effort).
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "fonts-wqy-microhei"],
                           capture_output=True, timeout=300, env=env)
        except (subprocess.SubprocessError, OSError) as err:
            detail = getattr(err, "stderr", b"") or b""
            pytest.skip(f"could not install chromium + chromium-driver with apt-get: {err} "
                        f"{detail.decode(errors='replace')[-300:]}")
        browser, driver = _browser_binaries()
        if not (browser and driver):
            pytest.skip("apt-get ran but chromium / chromedriver are still not on PATH")
    return browser, driver


@pytest.fixture
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    binary, driver_path = chromium
    profile = tempfile.mkdtemp(prefix="lipsync-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=ChromeService(executable_path=driver_path), options=options)
    except Exception as err:  # a browser that cannot start here is an environment problem, said plainly
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"headless chromium did not start: {str(err).splitlines()[0]}")
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory, media_kit):
    return make_media(tmp_path_factory.mktemp("web_media"), media_kit)


@pytest.fixture(scope="module")
def web(serve_port, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("serve_web")
    svc = deploy(serve_port, APP, settings_for_test("web", root / "state", root / "work"))
    try:
        yield svc
    finally:
        undeploy(svc)


def _shoot(driver, path):
    driver.save_screenshot(str(path))
    for copy in SCREENSHOT_COPIES:
        shutil.copyfile(path, copy)


def _js(driver, body: str):
    return driver.execute_script(body)


def _job_options(web, job_id: str) -> dict:
    """The options the server recorded for a job: ``GET /jobs/{id}`` when it shows them, else the
    job store's record."""
    import requests

    shown = requests.get(web.url(f"/jobs/{job_id}"), timeout=10).json()
    if isinstance(shown.get("options"), dict):
        return shown["options"]
    from serve.store import JobStore

    return JobStore(web.state_dir).get(job_id).request["options"]


def test_examples_route_serves_only_the_samples(web):
    import requests

    from lipsync.assets import SAMPLE_AUDIO, SAMPLE_VIDEO

    for name, path, kind in (("face.mp4", SAMPLE_VIDEO, "video/mp4"), ("speech.wav", SAMPLE_AUDIO, "audio/wav")):
        r = requests.get(web.url(f"/examples/{name}"), timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), r.headers
        assert r.content == path.read_bytes()
    for bad in ("dub.csv", "face.mp4x", "speech.WAV", "%2E%2E"):  # reach the route: its own 404
        r = requests.get(web.url(f"/examples/{bad}"), timeout=10)
        assert r.status_code == 404 and r.json().get("error") == "NotFound", (bad, r.status_code, r.text[:200])
    for bad in ("..%2F__init__.py", "%2Fetc%2Fpasswd", "sub/face.mp4"):  # paths: no route matches
        r = requests.get(web.url(f"/examples/{bad}"), timeout=10)
        assert r.status_code == 404 and "detail" in r.json(), (bad, r.status_code, r.text[:200])
    spec = requests.get(web.url("/openapi.json"), timeout=10).json()
    assert "/examples/{name}" in spec["paths"]


def test_page_example_options_progress_and_result(web, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from lipsync.options import REQUEST_OPTIONS

    browser.get(web.url("/"))
    button = browser.find_element(By.ID, "generate")
    assert "生成同步视频" in button.text and "Generate" in button.text
    for idle in ("progress_box", "result", "face_preview", "audio_preview", "error"):
        assert not browser.find_element(By.ID, idle).is_displayed(), idle

    # The advanced section: one input per request option, in declaration order, each with the
    # declaration's help (what --help and /docs say); closed until opened.
    advanced = browser.find_element(By.ID, "advanced")
    assert advanced.get_attribute("open") is None
    names = _js(browser, "return Array.from(document.querySelectorAll('#advanced [data-option]'))"
                         ".map((e) => e.dataset.option);")
    assert names == [o.name for o in REQUEST_OPTIONS]
    advanced.find_element(By.TAG_NAME, "summary").click()
    for opt in REQUEST_OPTIONS:
        box = browser.find_element(By.ID, f"opt-{opt.name}").find_element(By.XPATH, "..")
        assert opt.name in box.text and opt.help in box.text and "(default: " in box.text, box.text
    kinds = {o.name: _js(browser, f"const e = document.getElementById('opt-{o.name}');"
                                  "return e.tagName + ':' + e.type;") for o in REQUEST_OPTIONS}
    expected = {"int": "INPUT:number", "float": "INPUT:number", "bool": "INPUT:checkbox",
                "choice": "SELECT:select-one", "face": "INPUT:text"}
    assert kinds == {o.name: expected[o.kind] for o in REQUEST_OPTIONS}
    steps = browser.find_element(By.ID, "opt-num_steps")
    assert steps.get_attribute("value") == "1"  # defaults.web_num_steps
    assert browser.find_element(By.ID, "opt-seed").get_attribute("placeholder") == "1247"

    # The one-click example fills both file inputs and shows their previews.
    browser.find_element(By.ID, "example").click()
    WebDriverWait(browser, 30).until(lambda d: _js(d, (
        "const f = document.getElementById('face_video'), a = document.getElementById('audio_player');"
        "return document.getElementById('face').files.length === 1 &&"
        "       document.getElementById('audio').files.length === 1 &&"
        "       f.readyState >= 1 && a.readyState >= 1;")))
    preview = _js(browser, (
        "const f = document.getElementById('face_video'), a = document.getElementById('audio_player');"
        "return {face: document.getElementById('face').files[0].name,"
        "        audio: document.getElementById('audio').files[0].name,"
        "        video_w: f.videoWidth, video_d: f.duration, audio_d: a.duration,"
        "        video_src: f.currentSrc, image_hidden: document.getElementById('face_image').hidden};"))
    assert preview["face"] == "face.mp4" and preview["audio"] == "speech.wav", preview
    assert preview["video_src"].startswith("blob:") and preview["image_hidden"], preview
    assert preview["video_w"] == 256 and abs(preview["video_d"] - 3.0) < 0.1, preview
    assert abs(preview["audio_d"] - 3.69) < 0.1, preview
    assert browser.find_element(By.ID, "face_video").is_displayed()
    assert browser.find_element(By.ID, "audio_player").is_displayed()

    # Advanced options: fewer steps (a short run), another seed and loop mode; they reach the job,
    # and only they are sent (the form's string fields, recorded from the page's own fetch).
    steps.clear()
    steps.send_keys("2")
    browser.find_element(By.ID, "opt-seed").send_keys("4242")
    Select(browser.find_element(By.ID, "opt-loop")).select_by_value("repeat")
    _js(browser, "window.__sent = null; const plain = window.fetch;"
                 "window.fetch = (url, init) => {"
                 "  if (url === '/jobs' && init && init.body instanceof FormData)"
                 "    window.__sent = Array.from(init.body.entries()).map(([k, v]) => [k, typeof v === 'string' ? v"
                 "                    : 'file:' + v.name]);"
                 "  return plain(url, init); };")
    button.click()

    seen = []  # (status text, progress value, bar visible) while the job runs

    def finished(d):
        state = _js(d, "return [document.getElementById('status').textContent,"
                       "        document.getElementById('progress').getAttribute('value'),"
                       "        !document.getElementById('progress_box').hidden];")
        seen.append(tuple(state))
        if d.find_element(By.ID, "error").is_displayed():
            return "error"
        return "done" if d.find_element(By.ID, "result").is_displayed() else False

    outcome = WebDriverWait(browser, 300, poll_frequency=0.25).until(finished)
    if outcome == "error":
        _shoot(browser, tmp_path / "serve_error.png")
        pytest.fail("the page showed an error: " + browser.find_element(By.ID, "error").text)
    status = browser.find_element(By.ID, "status").text
    assert "完成" in status and "done" in status
    running = [s for s in seen if s[0].startswith("生成中 / generating") and s[2]]
    assert running or any(s[0].startswith("排队中") for s in seen), seen[-10:]
    assert all(0.0 <= float(v) <= 1.0 for _, v, _ in running if v is not None), running
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "1"
    assert browser.find_element(By.ID, "pct").text == "100%"

    job_id = browser.find_element(By.ID, "result").get_attribute("data-job")
    sent = _js(browser, "return window.__sent;")
    assert sent == [["video", "file:face.mp4"], ["audio", "file:speech.wav"], ["num_steps", "2"], ["seed", "4242"],
                    ["loop", "repeat"]], sent
    recorded = _job_options(web, job_id)
    assert recorded["seed"] == 4242 and recorded["num_steps"] == 2 and recorded["loop"] == "repeat", recorded

    # The <video> loads the result: metadata known, a real duration (the speech's 3.69 s).
    WebDriverWait(browser, 60).until(lambda d: _js(
        d, "const v = document.getElementById('video'); return v.readyState >= 1 && v.duration > 0;"))
    state = _js(browser, "const v = document.getElementById('video');"
                         "return {ready: v.readyState, duration: v.duration, error: v.error && v.error.code,"
                         "        width: v.videoWidth, src: v.currentSrc};")
    assert state["error"] is None and state["ready"] >= 1, state
    assert abs(state["duration"] - 3.69) < 0.2 and state["width"] == 256, state
    assert state["src"].endswith(f"/jobs/{job_id}/result")

    # The download link: an attachment, an mp4, under a file name made from the input's.
    link = browser.find_element(By.ID, "download")
    assert link.get_attribute("href").endswith(f"/jobs/{job_id}/result?download=true")
    assert link.get_attribute("download") == f"lipsync-face-{job_id[:8]}.mp4"
    got = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('download').href).then(async (r) => {"
        "  const b = new Uint8Array(await r.arrayBuffer());"
        "  done({status: r.status, type: r.headers.get('content-type'),"
        "        disposition: r.headers.get('content-disposition'), size: b.length,"
        "        head: String.fromCharCode(...b.slice(4, 8))});"
        "}).catch((e) => done({error: String(e)}));")
    assert got.get("status") == 200 and got["type"] == "video/mp4", got
    assert got["disposition"].startswith("attachment") and got["head"] == "ftyp" and got["size"] > 10_000, got

    # It plays: muted playback advances the clock (frames decode), then pause for the screenshot.
    _js(browser, "const v = document.getElementById('video'); v.muted = true; v.play();")
    WebDriverWait(browser, 30).until(lambda d: _js(
        d, "const v = document.getElementById('video');"
           "if (v.currentTime > 0.8) { v.pause(); return !v.seeking && v.readyState >= 2; } return false;"))
    browser.set_window_size(1280, 1500)
    _js(browser, "window.scrollTo(0, 0);")
    _shoot(browser, tmp_path / "serve_page.png")
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000


def test_page_previews_a_still_image(web, media, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(web.url("/"))
    assert not browser.find_element(By.ID, "face_preview").is_displayed()
    browser.find_element(By.ID, "face").send_keys(str(media["image"]))
    WebDriverWait(browser, 20).until(lambda d: _js(
        d, "const i = document.getElementById('face_image'); return !i.hidden && i.complete && i.naturalWidth > 0;"))
    assert browser.find_element(By.ID, "face_image").is_displayed()
    assert not browser.find_element(By.ID, "face_video").is_displayed()


def test_page_shows_a_clear_error(web, media, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(web.url("/"))
    browser.find_element(By.ID, "face").send_keys(str(media["text_as_mp4"]))
    browser.find_element(By.CSS_SELECTOR, "input[name=speech][value=text]").click()
    browser.find_element(By.ID, "text").send_keys("Hello there.")
    browser.find_element(By.ID, "generate").click()
    box = WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed() else False)
    assert "video: not a media file" in box.text
    assert browser.find_element(By.ID, "generate").is_enabled()

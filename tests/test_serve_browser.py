"""The web page in a real browser: headless Chromium driven by selenium loads the page, uploads a
synthetic clip and its speech, clicks "生成同步视频 / Generate", follows the progress and checks that
the result plays in the page's <video> element. Screenshots: the test's temp dir and
/tmp/serve_screenshot.png.

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
SCREENSHOT_COPY = "/tmp/serve_screenshot.png"
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
    shutil.copyfile(path, SCREENSHOT_COPY)


def test_page_generates_and_plays_the_result(web, media, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(web.url("/"))
    button = browser.find_element(By.ID, "generate")
    assert "生成同步视频" in button.text and "Generate" in button.text
    browser.find_element(By.ID, "face").send_keys(str(media["video"]))
    browser.find_element(By.ID, "audio").send_keys(str(media["audio"]))
    assert browser.find_element(By.ID, "steps").get_attribute("value") == "1"  # defaults.web_num_steps
    button.click()

    def finished(d):
        if d.find_element(By.ID, "error").is_displayed():
            return "error"
        return "done" if d.find_element(By.ID, "result").is_displayed() else False

    outcome = WebDriverWait(browser, 180, poll_frequency=0.5).until(finished)
    if outcome == "error":
        _shoot(browser, tmp_path / "serve_error.png")
        pytest.fail("the page showed an error: " + browser.find_element(By.ID, "error").text)
    assert "完成" in browser.find_element(By.ID, "status").text
    # The <video> loads the result: metadata known, a real duration (the speech's 1 s).
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "const v = document.getElementById('video'); return v.readyState >= 1 && v.duration > 0;"))
    state = browser.execute_script(
        "const v = document.getElementById('video');"
        "return {ready: v.readyState, duration: v.duration, error: v.error && v.error.code,"
        "        width: v.videoWidth, src: v.currentSrc};")
    assert state["error"] is None and state["ready"] >= 1, state
    assert abs(state["duration"] - 1.0) < 0.15 and state["width"] == 128, state
    assert "/jobs/" in state["src"] and state["src"].endswith("/result")
    href = browser.find_element(By.ID, "download").get_attribute("href")
    assert href.endswith("/result?download=true")
    # It plays: muted playback advances the clock (frames decode), then pause for the screenshot.
    browser.execute_script("const v = document.getElementById('video'); v.muted = true; v.play();")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const v = document.getElementById('video');"
        "if (v.currentTime > 0.4) { v.pause(); return !v.seeking && v.readyState >= 2; } return false;"))
    _shoot(browser, tmp_path / "serve_page.png")
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000


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

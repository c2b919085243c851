"""`eanet serve`: the Gradio demo on 127.0.0.1, called with gradio_client and driven by a real browser."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

import eanet

gradio_client = pytest.importorskip("gradio_client", reason="the demo extra is not installed: pip install -e '.[demo]'")
CLASSES = ["apple", "bicycle", "castle", "dolphin", "elephant", "forest", "girl"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    eanet.create_model("eanet_keras", depth=2, num_classes=len(CLASSES), class_names=CLASSES).save_pretrained(
        root / "model")
    image = root / "photo.png"
    Image.fromarray(torch.randint(0, 256, (48, 40, 3), dtype=torch.uint8).numpy()).save(image)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "eanet", "serve", str(root / "model"), "--port", str(port),
                             "--example", str(image)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=root, env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the demo did not start in 120 s")
    yield {"url": url, "root": root, "image": image, "model": root / "model"}
    proc.terminate()
    proc.wait(timeout=30)


def _predict_cli(model, image):
    out = subprocess.run([sys.executable, "-m", "eanet", "predict", str(model), str(image), "--json"],
                         capture_output=True, text=True, timeout=300)
    return [(p["label"], p["probability"]) for p in json.loads(out.stdout)[0]["predictions"]]


def test_top5_equals_eanet_predict(server):
    client = gradio_client.Client(server["url"], verbose=False)
    labels, panel = client.predict(gradio_client.handle_file(str(server["image"])), api_name="/classify")
    served = [(c["label"], c["confidence"]) for c in labels["confidences"]]
    expected = _predict_cli(server["model"], server["image"])
    assert [name for name, _ in served] == [name for name, _ in expected]
    assert [p for _, p in served] == pytest.approx([p for _, p in expected], abs=1e-5)
    with Image.open(panel) as png:
        assert png.size[0] > 300


def test_bad_input_gets_a_message_and_the_server_keeps_serving(server, tmp_path):
    from gradio_client.exceptions import AppError

    client = gradio_client.Client(server["url"], verbose=False)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    huge = tmp_path / "huge.png"  # 20,000 x 10,000 pixels of one colour: a few KB, over Pillow's limit
    Image.new("1", (20000, 10000)).save(huge)
    for upload, message in ((text, "notes.txt: not an image"), (huge, "huge.png"), (None, "no image")):
        with pytest.raises(AppError, match=message):
            client.predict(gradio_client.handle_file(str(upload)) if upload else None, api_name="/classify")
    labels, _ = client.predict(gradio_client.handle_file(str(server["image"])), api_name="/classify")
    assert labels["label"] in CLASSES


def test_ten_requests_at_once_are_all_answered(server):
    def one(_):
        client = gradio_client.Client(server["url"], verbose=False)
        return client.predict(gradio_client.handle_file(str(server["image"])), api_name="/classify")[0]["label"]

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(10)))
    assert len(answers) == 10 and len(set(answers)) == 1


CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no headless Chromium: apt-get install chromium chromium-driver")
def test_a_browser_uploads_an_image_and_reads_the_top5(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a test extra: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(server["url"])
        wait = WebDriverWait(browser, 60)
        upload = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        upload.send_keys(str(server["image"]))
        wait.until(lambda b: "photo.png" in b.page_source)
        browser.find_element(By.XPATH, "//button[contains(., 'Classify')]").click()
        expected = _predict_cli(server["model"], server["image"])
        top = expected[0][0]
        wait.until(lambda b: all(name in b.find_element(By.TAG_NAME, "body").text for name, _ in expected))
        body = browser.find_element(By.TAG_NAME, "body").text
        assert f"{round(100 * expected[0][1])}%" in body and top in body
        time.sleep(1)  # let the attention panel finish drawing
        shot = Path(os.environ.get("EANET_DEMO_SCREENSHOT", tmp_path / "demo.png"))
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.quit()


def test_a_taken_port_is_one_line(tmp_path, capsys):
    from eanet.cli import main

    eanet.create_model("eanet_keras", depth=1, num_classes=3).save_pretrained(tmp_path / "model")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["serve", str(tmp_path / "model"), "--port", str(port)])
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use; " \
                                   "give --port or --host another value"
    assert captured.out == ""  # nothing claims to be serving

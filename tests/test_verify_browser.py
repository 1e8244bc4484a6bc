"""The verify page in a real browser (Debian's chromium + chromium-driver, through selenium): answer 10 images
with the keyboard, stop, start again, and the page resumes at image 11 with 10 answers in verify.csv."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CHANGED, with_changed_labels

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium/chromedriver here: on Debian, "
                       "apt-get install chromium chromium-driver (.ci/run does)"),
]


def start_verify(run: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "must_cli", "verify", str(run), "--no-browser"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    while True:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, proc.communicate()
        if "verify page: " in line:
            return proc, line.split("verify page: ")[1].strip()


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    return out


@pytest.fixture()
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for_text(driver, selector: str, text: str, seconds: float = 30) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + seconds
    while text not in driver.find_element(By.CSS_SELECTOR, selector).text:
        assert time.monotonic() < deadline, driver.find_element(By.CSS_SELECTOR, selector).text
        time.sleep(0.05)


def test_keyboard_answers_survive_a_restart(browser, adapted_run, unlabeled_images, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    run = with_changed_labels(adapted_run, unlabeled_images, tmp_path)
    proc, url = start_verify(run)
    try:
        browser.get(url)
        for n in range(1, 11):
            wait_for_text(browser, "#where", f"Image {n} of {CHANGED} changed images")
            ActionChains(browser).send_keys("1" if n % 2 else "2").perform()
        wait_for_text(browser, "#where", f"Image 11 of {CHANGED}")
        wait_for_text(browser, "#summary", "10 answered, 0 skipped")
    finally:
        out = stop(proc)
    assert "10 answered, 0 skipped" in out
    lines = (run / "verify.csv").read_text().splitlines()
    assert lines[0] == "image,answer,class,time" and len(lines[1:]) == 10

    proc, url = start_verify(run)
    try:
        browser.get(url)
        wait_for_text(browser, "#where", f"Image 11 of {CHANGED} changed images")
        ActionChains(browser).send_keys("u").perform()  # undo goes back to the 10th answer
        wait_for_text(browser, "#where", f"Image 10 of {CHANGED}")
    finally:
        stop(proc)
    assert len((run / "verify.csv").read_text().splitlines()) == 1 + 10 + 1  # the undo is a line too

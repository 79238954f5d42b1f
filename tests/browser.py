"""A real headless browser for the page tests: Debian's chromium driven through its chromedriver."""

import os
import shutil
from pathlib import Path

import pytest


def open_browser():
    """A headless chromium under selenium, or a skip saying what to install."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (bash .ci/setup dev installs it)")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("needs Debian's chromium and chromium-driver (bash .ci/setup dev installs them)")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.binary_location = chromium
    # An explicit driver path: selenium then downloads nothing.
    return webdriver.Chrome(options=options, service=Service(driver))


def screenshot(browser, name: str) -> None:
    """Save a screenshot where VLMRW_SCREENSHOTS points (the README's pictures come from here)."""
    folder = os.environ.get("VLMRW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(folder) / name))

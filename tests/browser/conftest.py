"""The browser suite: a headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by Selenium) against a broker in this process
with authentication on, on SQLite (the console's pages are the same calls
on every backend; `tests/integration/test_console*.py` run them on both).

Without Chromium the suite skips, except where `BROKER_REQUIRE_BROWSER=1`
(CI), where it fails instead."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from broker.config import AuthConfig, WebConfig
from broker.domain.tokens import Tokens
from tests.conftest import make_config, wait_serving
from tests.integration.auth_helpers import CACHE_SECONDS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Where the screenshots go when asked (`make screenshots`).
SCREENSHOTS = os.environ.get("BROKER_SCREENSHOTS", "")


def _browser_missing() -> str:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make venv)"
    return ""


@pytest.fixture(scope="session")
def chromium():
    missing = _browser_missing()
    if missing:
        if os.environ.get("BROKER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser tests must run here, but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium):
    """The browser, with no cookies of an earlier test, at laptop size."""
    chromium.delete_all_cookies()
    chromium.set_window_size(1280, 900)
    yield chromium
    # Leaves the console's pages, closing their live connections.
    chromium.get("about:blank")
    chromium.delete_all_cookies()


@dataclasses.dataclass
class Lab:
    server: object
    admin: str
    viewer: str

    @property
    def url(self) -> str:
        return f"http://{self.server.web_address}"


@pytest.fixture
def lab(tmp_path):
    from broker.api.server import build_server

    config = dataclasses.replace(
        make_config(tmp_path),
        base_dir=".",
        web=WebConfig("127.0.0.1:0"),
        auth=AuthConfig(enabled=True, cache_seconds=CACHE_SECONDS),
    )
    server = build_server(config, "127.0.0.1:0")
    server.start()
    wait_serving(server.address)
    tokens = Tokens()
    yield Lab(server, tokens.create("ada", "admin")[1], tokens.create("vic", "viewer")[1])
    server.stop(0)


@pytest.fixture
def screenshot(browser, tmp_path):
    """Saves the page as `name.png`: into `BROKER_SCREENSHOTS` when set,
    else beside the test; returns the file's size."""

    def take(name: str) -> int:
        folder = SCREENSHOTS or str(tmp_path)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{name}.png")
        browser.save_screenshot(path)
        return os.path.getsize(path)

    return take

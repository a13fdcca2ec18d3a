"""The console in a real browser: sign in, add through the form, see a
typed error, watch the inventory and a resource change live as the CLI and
the SDK act, revoke from the page, and a viewer's and another site's posts
refused."""

from __future__ import annotations

import http.server
import subprocess
import threading

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from broker.v1 import lease_pb2
from resources.calculator.device import start_in_thread
from resources.calculator.resource import Calculator
from sdk import BrokerClient
from tests.integration.helpers import broker_command, subprocess_env

WAIT = 20.0


def wait_for(browser, condition, what: str):
    return WebDriverWait(browser, WAIT).until(condition, f"timed out waiting for {what}")


def sign_in(browser, lab, token: str) -> None:
    browser.get(lab.url + "/login")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
    wait_for(browser, expected_conditions.title_is("Inventory · Rotest broker"), "the inventory")


def live(browser) -> None:
    """Waits until the page's live connection is open."""
    wait_for(
        browser,
        expected_conditions.text_to_be_present_in_element((By.ID, "live-status"), "live"),
        "the live connection",
    )
    # A mark that a reload would wipe: the page must change in place.
    browser.execute_script("window.stillTheSamePage = true")


def same_page(browser) -> bool:
    return browser.execute_script("return window.stillTheSamePage === true")


@pytest.fixture
def device():
    server, port = start_in_thread()
    yield port
    server.close()


def test_sign_in_add_through_the_form_and_see_a_typed_error(browser, lab, screenshot):
    sign_in(browser, lab, lab.admin)
    assert "No Calculator resources." in browser.page_source
    browser.find_element(By.ID, "add-resource").click()
    browser.find_element(By.LINK_TEXT, "Calculator").click()
    browser.find_element(By.ID, "input-name").send_keys("calc")
    browser.find_element(By.ID, "input-field.ip_address").send_keys("300.1.2.3")
    browser.find_element(By.CSS_SELECTOR, "form.stack button[type=submit]").click()
    error = wait_for(
        browser,
        expected_conditions.visibility_of_element_located((By.ID, "error-field.ip_address")),
        "the field's error",
    )
    assert "is not an IPv4 or IPv6 address" in error.text
    ip = browser.find_element(By.ID, "input-field.ip_address")
    assert ip.get_attribute("aria-invalid") == "true"
    ip.clear()
    ip.send_keys("10.0.0.7")
    browser.find_element(By.CSS_SELECTOR, "form.stack button[type=submit]").click()
    wait_for(browser, expected_conditions.title_is("calc · Rotest broker"), "the resource page")
    field = browser.find_element(By.CSS_SELECTOR, "[data-field='ip_address']")
    assert field.text == "10.0.0.7"


def test_a_resource_added_from_the_cli_appears_without_a_reload(browser, lab, screenshot):
    sign_in(browser, lab, lab.admin)
    live(browser)
    subprocess.run(
        [
            broker_command(),
            "--target",
            lab.server.address,
            "--token",
            lab.admin,
            "resources",
            "add",
            "Calculator",
            "calc-cli",
            "--set",
            "ip_address=10.0.0.8",
        ],
        env=subprocess_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    row = wait_for(
        browser,
        expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, "table[data-kind='Calculator'] tr[data-name='calc-cli']")
        ),
        "the CLI's resource on the page",
    )
    assert "10.0.0.8" in row.text and "free" in row.text
    assert same_page(browser)
    assert screenshot("inventory") > 0


def test_an_sdk_lease_shows_live_and_a_revoke_from_the_page_ends_it(
    browser, lab, device, screenshot
):
    with BrokerClient(lab.server.address, token=lab.admin, holder="ada@bench-3") as client:
        client.create_resource("Calculator", "calc", {"ip_address": "127.0.0.1", "port": device})
        sign_in(browser, lab, lab.admin)
        browser.get(lab.url + "/resources/calc")
        live(browser)
        held = client.lease(Calculator, name="calc", ttl=30)
        with pytest.raises(Exception, match="revoked"), held as calculator:
            assert calculator.calculate("6 * 7") == 42
            wait_for(
                browser,
                expected_conditions.text_to_be_present_in_element((By.ID, "holder"), "ada"),
                "the SDK's lease on the page",
            )
            assert same_page(browser)
            assert screenshot("resource") > 0
            revoke = browser.find_element(By.CSS_SELECTOR, "form.revoke")
            assert revoke.is_displayed()
            revoke.find_element(By.NAME, "reason").send_keys("bench is rewired")
            revoke.find_element(By.CSS_SELECTOR, "button").click()
            assert held.lost.wait(WAIT), "the SDK did not see its lease end"
        lease = client.get_lease(held.lease_id)
        assert lease.end_reason == "bench is rewired"
        wait_for(
            browser,
            expected_conditions.text_to_be_present_in_element(
                (By.CSS_SELECTOR, "[data-state-class]"), "free"
            ),
            "the page to show it free",
        )


def test_the_queue_page_shows_who_waits_and_why(browser, lab, screenshot):
    with BrokerClient(lab.server.address, token=lab.admin, holder="ada@bench-3") as client:
        client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1"})
        lease, secret = client.acquire([lease_pb2.Requirement(kind="Calculator")], ttl=60)
        sign_in(browser, lab, lab.admin)
        browser.get(lab.url + "/queue")
        live(browser)
        with BrokerClient(lab.server.address, token=lab.admin, holder="bob@bench-4") as bob:
            waiting = threading.Thread(
                target=bob.acquire,
                args=([lease_pb2.Requirement(kind="Calculator")],),
                kwargs={"ttl": 60, "max_wait": WAIT},
                daemon=True,
            )
            waiting.start()
            row = wait_for(
                browser,
                expected_conditions.presence_of_element_located(
                    (By.CSS_SELECTOR, "#queue tbody tr")
                ),
                "the waiter on the page",
            )
            assert "bob@bench-4" in row.text
            assert same_page(browser)
            assert screenshot("queue") > 0
            client.release(lease.lease_id, secret)
            waiting.join(WAIT)
            wait_for(
                browser,
                expected_conditions.visibility_of_element_located((By.ID, "queue-empty")),
                "the queue to empty",
            )


def test_a_viewer_sees_no_controls_and_forged_posts_are_refused(browser, lab):
    with BrokerClient(lab.server.address, token=lab.admin) as client:
        client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1"})
    sign_in(browser, lab, lab.viewer)
    assert browser.find_elements(By.ID, "add-resource") == []
    browser.get(lab.url + "/resources/calc")
    assert browser.find_elements(By.ID, "admin-actions") == []
    assert browser.find_elements(By.CSS_SELECTOR, "form.revoke") == []
    # A form made on the page without its CSRF token.
    browser.execute_script(
        """const form = document.createElement("form");
        form.method = "post"; form.action = "/resources/calc/out-of-service";
        const reason = document.createElement("input");
        reason.name = "reason"; reason.value = "forged";
        form.append(reason); document.body.append(form); form.submit();"""
    )
    refusal = wait_for(
        browser, expected_conditions.presence_of_element_located((By.ID, "refusal")), "a refusal"
    )
    assert "CSRF token" in refusal.text
    with BrokerClient(lab.server.address, token=lab.admin) as client:
        assert client.get_resource("calc").is_usable


def test_a_post_from_another_site_is_refused(browser, lab):
    with BrokerClient(lab.server.address, token=lab.admin) as client:
        client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1"})
    sign_in(browser, lab, lab.admin)
    target = f"{lab.url}/resources/calc/out-of-service"
    page = (
        f'<form id="f" method="post" action="{target}">'
        '<input name="reason" value="forged"><input name="csrf" value="guess"></form>'
        "<script>document.getElementById('f').submit()</script>"
    ).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        # `localhost` is another site than 127.0.0.1 to the browser.
        browser.get(f"http://localhost:{evil.server_address[1]}/")
        refusal = wait_for(
            browser,
            expected_conditions.presence_of_element_located((By.ID, "refusal")),
            "a refusal",
        )
        assert "another site" in refusal.text or "CSRF token" in refusal.text
    finally:
        evil.shutdown()
        evil.server_close()
    with BrokerClient(lab.server.address, token=lab.admin) as client:
        assert client.get_resource("calc").is_usable


def test_the_pages_fit_a_phone(browser, lab):
    with BrokerClient(lab.server.address, token=lab.admin) as client:
        client.create_resource("Calculator", "calc", {"ip_address": "10.0.0.1"})
    sign_in(browser, lab, lab.admin)
    browser.set_window_size(390, 844)
    for path in ("/", "/resources/calc", "/leases", "/queue", "/events"):
        browser.get(lab.url + path)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} is wider than a phone by {overflow} px"


def test_the_console_works_from_the_keyboard(browser, lab):
    browser.get(lab.url + "/login")
    token = browser.switch_to.active_element
    assert token.get_attribute("id") == "token"  # focused on arrival
    token.send_keys(lab.admin + Keys.ENTER)
    wait_for(browser, expected_conditions.title_is("Inventory · Rotest broker"), "the inventory")
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.text == "Skip to content"
    for _ in range(30):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if browser.switch_to.active_element.get_attribute("id") == "add-resource":
            break
    else:
        raise AssertionError("Tab never reached 'Add a resource'")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, expected_conditions.title_is("Add a resource · Rotest broker"), "the kinds")
    browser.find_element(By.LINK_TEXT, "Calculator").send_keys(Keys.ENTER)
    name = browser.find_element(By.ID, "input-name")
    name.send_keys("calc-keys", Keys.TAB)
    browser.switch_to.active_element.send_keys("10.0.0.5", Keys.ENTER)
    wait_for(browser, expected_conditions.title_is("calc-keys · Rotest broker"), "the resource")

"""The scientist's path through the real Prefect UI, in headless Chromium (selenium + Debian's chromium and
chromium-driver; `make browser` installs them, CI runs it): open the pipeline deployment, Run > Custom run, fill
the form, submit, let a process worker run it, and see the summary artifact and the contact sheet (embedded in
the summary) render from the flow run's page. Screenshots of each step go to the test's tmp folder, or to
$OOD_UI_SCREENSHOTS when set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from made_fits import write_skies
from prefect_server import Server, running_server

from ood_core.store import open_run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("OOD_SKIP_SERVER_TESTS") == "1", reason="OOD_SKIP_SERVER_TESTS=1"),
]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")
RUN_NAME = "UI test: 3 demo skies"
FORM = {"Samples (Optional)": "1", "Seed (Optional)": "2", "T0 (Optional)": "300", "Steps (Optional)": "4",
        "Reference Count (Optional)": "2", "Batch Size (Optional)": "8"}
WAIT = 60.0


def _needs_browser() -> None:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver not installed (make browser: apt-get install chromium "
                    "chromium-driver)")
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _needs_browser()
    with running_server(tmp_path_factory.mktemp("prefect_ui_home"), ui=True) as srv:
        srv.cli("work-pool", "create", "cpu", "--type", "process")
        srv.cli("deploy", "--name", "pipeline-cpu", timeout=300)
        yield srv


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    driver.shots = _shots(tmp_path)  # where _wait leaves a screenshot when something does not appear
    try:
        yield driver
    finally:
        driver.quit()


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("OOD_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver: Any, what: str, condition: Any, timeout: float = WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition)
    except Exception as exc:
        shot = Path(getattr(driver, "shots", ".")) / "failed.png"
        driver.save_screenshot(str(shot))
        raise AssertionError(f"UI: {what} did not appear within {timeout:.0f} s at {driver.current_url} "
                             f"(screenshot {shot})") from exc


def _by_text(driver: Any, tag: str, text: str) -> Any:
    from selenium.webdriver.common.by import By

    xpath = f"//{tag}[normalize-space()={text!r}]"
    return _wait(driver, f"{tag} '{text}'", lambda d: next(iter(d.find_elements(By.XPATH, xpath)), None))


def _field(driver: Any, label: str) -> Any:
    """The input (or textarea) of the schema-form property labelled ``label``."""
    from selenium.webdriver.common.by import By

    xpath = (f"//span[contains(@class, 'schema-form-property__label') and normalize-space()={label!r}]"
             "/ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')][1]"
             "/div[contains(@class, 'p-label__body')]//*[self::input or self::textarea]")
    return _wait(driver, f"form field '{label}'", lambda d: next(iter(d.find_elements(By.XPATH, xpath)), None))


def _type(element: Any, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(value)


def _client_call(fn: Any) -> Any:
    from prefect.client.orchestration import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(go())


def _fill_custom_run(driver: Any, inputs: Path, store: Path, shots: Path) -> None:
    _by_text(driver, "button", "Run").click()
    _by_text(driver, "button", "Custom run").click()
    _wait(driver, "the custom-run form", lambda d: "/run" in d.current_url)
    name = _wait(driver, "the run name box", lambda d: next(iter(
        d.find_elements("css selector", ".flow-run-name-input input")), None))
    _type(name, RUN_NAME)
    inputs_box = _field(driver, "Store")  # wait for the parameter form itself
    _type(inputs_box, str(store))
    from selenium.webdriver.common.by import By

    add = driver.find_element(By.XPATH, "//span[normalize-space()='Inputs']/ancestor::div[contains(concat(' ', "
                                        "normalize-space(@class), ' '), ' schema-form-property ')][1]"
                                        "//button[normalize-space()='Add item']")
    add.click()
    _type(_field(driver, "Inputs"), str(inputs))
    for label, value in FORM.items():
        _type(_field(driver, label), value)
    driver.save_screenshot(str(shots / "1-form-filled.png"))
    _click_submit(driver)


def _click_submit(driver: Any, patience: float = 30.0) -> None:
    """Click Submit; while a toast of the UI lies over the button (seen once under load), wait for it to go, as a
    user would."""
    from selenium.common.exceptions import ElementClickInterceptedException

    submit = _by_text(driver, "button", "Submit")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", submit)
    deadline = time.monotonic() + patience
    while True:
        try:
            submit.click()
            return
        except ElementClickInterceptedException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


ERROR_TOAST = "Something went wrong"
"""The Prefect UI's toast when a request of the page failed (the API's answer is not shown)."""


def _submit_accepted(driver: Any, deployment_id: Any) -> None:
    """Wait until the UI leaves the form for the runs (the API accepted the run). Once, in full-suite runs, the
    UI's create-run request failed with only its error toast to show (the server logged nothing); when that
    happens and no run of the deployment exists, Submit is clicked again, as a user would."""
    def accepted(d: Any) -> bool:
        return "tab=Runs" in d.current_url or "/flow-run/" in d.current_url

    _wait(driver, "the page after Submit", lambda d: accepted(d) or ERROR_TOAST in d.page_source)
    if accepted(driver):
        return
    runs = _client_call(lambda c: c.read_flow_runs())
    assert not [r for r in runs if r.deployment_id == deployment_id], "error toast although the run was created"
    print(f"UI: {ERROR_TOAST!r} after Submit, no run created; submitting again")
    _click_submit(driver)
    _wait(driver, "the page after the second Submit", accepted)


def test_custom_run_from_the_ui_shows_summary_and_contact_sheet(
    server: Server, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    inputs = tmp_path / "inputs"
    write_skies(inputs, 3)  # demo skies (tests/made_fits.py)
    store = tmp_path / "store.zarr"
    deployment = _client_call(lambda c: c.read_deployment_by_name("pipeline/pipeline-cpu"))

    browser.get(f"{server.ui_url}/deployments/deployment/{deployment.id}")
    _by_text(browser, "button", "Run")
    shots = _shots(tmp_path)
    browser.save_screenshot(str(shots / "0-deployment.png"))
    assert "Can't connect to Server API" not in browser.page_source
    _fill_custom_run(browser, inputs, store, shots)
    # The UI goes back to the deployment's runs (or to the new run) once the API accepted the run.
    _submit_accepted(browser, deployment.id)
    browser.save_screenshot(str(shots / "2-submitted.png"))
    runs = _client_call(lambda c: c.read_flow_runs())
    created = [r for r in runs if r.deployment_id == deployment.id]
    assert len(created) == 1, [(r.name, r.state_name) for r in runs]
    flow_run_id = created[0].id

    flow_run = _client_call(lambda c: c.read_flow_run(flow_run_id))
    assert flow_run.name == RUN_NAME
    assert flow_run.parameters["params"]["inputs"] == [str(inputs)]
    assert flow_run.parameters["params"]["samples"] == 1 and flow_run.parameters["params"]["steps"] == 4
    started = time.monotonic()
    done = server.cli("worker", "start", "--pool", "cpu", "--run-once", "--type", "process", timeout=420,
                      check=False)
    flow_run = _client_call(lambda c: c.read_flow_run(flow_run_id))
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"{flow_run.state}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    assert flow_run.name == RUN_NAME  # the name typed in the form is kept
    worker_seconds = time.monotonic() - started

    run_id = open_run(str(store)).attrs["ood_run"]["run_id"]

    # The flow run's page, Artifacts tab: the report's cards; each opens its artifact's page.
    _open_artifact(browser, server, flow_run_id, "ood-run-summary")
    heading = _wait(browser, "the rendered run summary", lambda d: next(iter(d.find_elements(
        By.XPATH, f"//h1[contains(normalize-space(), '{run_id}')]")), None))
    images = _wait(browser, "the summary's contact sheet, rendered", _rendered_pngs)
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", heading)
    browser.save_screenshot(str(shots / "3-summary.png"))
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", images[0])
    browser.save_screenshot(str(shots / "4-contact-sheet.png"))
    width = browser.execute_script("return arguments[0].naturalWidth", images[0])
    assert width >= 300, f"contact sheet {width} px wide"
    print(f"UI test: worker ran the flow in {worker_seconds:.0f} s; screenshots in {shots}")


def _rendered_pngs(driver: Any) -> list[Any]:
    """The page's PNG images (data: URIs, as the artifacts hold them) that the browser decoded."""
    from selenium.webdriver.common.by import By

    return [img for img in driver.find_elements(By.TAG_NAME, "img")
            if (img.get_attribute("src") or "").startswith("data:image/png")
            and driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)]


def _open_artifact(driver: Any, server: Server, flow_run_id: Any, key: str) -> str:
    """Flow run page -> Artifacts tab -> the artifact card ``key``; returns the artifact page's URL."""

    driver.get(f"{server.ui_url}/runs/flow-run/{flow_run_id}")
    _wait(driver, "the Completed state badge", lambda d: "Completed" in d.page_source)
    _by_text(driver, "li", "Artifacts").click()
    card = _by_text(driver, "div", key)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", card)
    card.click()
    _wait(driver, f"the page of artifact {key}", lambda d: "/artifacts/artifact/" in d.current_url)
    return str(driver.current_url)

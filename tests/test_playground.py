"""The playground page (`GET /` of `charrnn serve`) in a real headless browser.

A real `charrnn serve` process on a free loopback port (`--port 0`: it says which on stderr),
serving a tiny model trained once per module by a real `charrnn train`; Debian's `chromium`
driven by selenium through `chromium-driver`. The page is used as a person would: type a
prompt, set the length, press Generate, watch the text stream in and the status say done.

Skips, saying why, where selenium, chromium or chromedriver is missing (`.ci/run` installs
them, so CI runs these tests). Nothing here talks to anything but 127.0.0.1.
"""

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from charrnn.synthetic import MarkovSource

from .served import Served
from .test_cli import cli_env, run_cli

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the test extra installs it
    webdriver = None

ALPHABET = "abcé \n"  # a non-ASCII letter: the page must decode the stream as UTF-8
# typed by chromedriver, so ASCII (it types é as a decomposed e); made of the model's
# characters, and long enough not to be drawn again by chance
PROMPT = "cab bac acab ca"
LENGTH = 250
GENERATE_TIMEOUT_S = 60
API_KEY = "playground-test-key"


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def _driver() -> str | None:
    found = shutil.which("chromedriver")
    if found:
        return found
    debian = Path("/usr/lib/chromium/chromedriver")
    return str(debian) if debian.is_file() else None


def _missing() -> str | None:
    if webdriver is None:
        return "selenium is not installed (pip install -e '.[test]' installs it)"
    if _browser() is None:
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if _driver() is None:
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


# ---------------------------------------------------------------------------------------------
# the model, the servers, the browser


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`charrnn train` run once, in a subprocess, on a small Markov corpus."""
    work = tmp_path_factory.mktemp("playground-work")
    state = tmp_path_factory.mktemp("playground-state")
    text = MarkovSource(alphabet=ALPHABET, order=2, seed=0).sample_text(5000)
    (work / "corpus.txt").write_text(text, encoding="utf-8")
    code, _, err = run_cli("train", "corpus.txt", "--cell", "gru", "--hidden", "16",
                           "--layers", "1", "--max-steps", "20", "--out", "RUN",
                           cwd=work, state_dir=state)
    assert code == 0, f"training failed (exit {code}):\n{err}"
    env = cli_env(state)
    env.pop("CHARRNN_API_KEY", None)  # the user's own key must not change these tests
    return SimpleNamespace(work=work, state=state, run=work / "RUN", vocab=set(text), env=env)


@pytest.fixture(scope="module")
def server(trained):
    serving = Served(trained)
    yield serving
    serving.stop()


@pytest.fixture(scope="module")
def keyed_server(trained):
    serving = Served(trained, env={**trained.env, "CHARRNN_API_KEY": API_KEY})
    yield serving
    serving.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless chromium, kept off the network: no background requests, no proxy."""
    options = Options()
    options.binary_location = _browser()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--no-proxy-server",
                 "--window-size=1024,768",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=_driver()), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------------------------
# helpers


def open_page(browser, serving) -> None:
    browser.get(serving.url)
    found = browser.find_elements(By.ID, "generate")
    assert found and found[0].is_displayed(), \
        f"no Generate button at {serving.url}; the page says: " \
        f"{browser.find_element(By.TAG_NAME, 'body').text[:300]!r}"


def fill(browser, field: str, value: str) -> None:
    element = browser.find_element(By.ID, field)
    element.clear()
    element.send_keys(value)


def text_of(browser, element_id: str) -> str:
    """The element's exact text (WebElement.text trims and folds whitespace)."""
    return browser.execute_script(f"return document.getElementById('{element_id}').textContent")


def count_output_changes(browser) -> None:
    """From now on, window.outputChanges counts the times the output element's text changes."""
    browser.execute_script("""
        window.outputChanges = 0;
        new MutationObserver((records) => { window.outputChanges += records.length; })
            .observe(document.getElementById('output'),
                     {childList: true, characterData: true, subtree: true});""")


def wait_until(browser, condition, what: str, poll: float = 0.05) -> None:
    """Wait (at most GENERATE_TIMEOUT_S) until condition(browser); else fail saying what the
    page shows then."""
    try:
        WebDriverWait(browser, GENERATE_TIMEOUT_S, poll_frequency=poll).until(condition)
    except TimeoutException:
        pytest.fail(f"{what} within {GENERATE_TIMEOUT_S} s; the status says "
                    f"{text_of(browser, 'status')!r}, the output {text_of(browser, 'output')!r}")


def generate(browser) -> str:
    """Press Generate and wait until the status is no longer `generating`; the final status."""
    browser.find_element(By.ID, "generate").click()
    wait_until(browser, lambda b: text_of(b, "status") not in ("", "generating"),
               "the page did not finish generating")
    return text_of(browser, "status")


# ---------------------------------------------------------------------------------------------
# the tests


def test_the_page_names_the_model(browser, server):
    open_page(browser, server)
    assert "charrnn playground" in browser.title
    assert "RUN" in browser.title, "the served model's name (its run directory's)"
    assert "RUN" in browser.find_element(By.TAG_NAME, "body").text


def test_typing_a_prompt_and_pressing_generate_streams_the_text_in(browser, server, trained):
    open_page(browser, server)
    fill(browser, "prompt", PROMPT)
    fill(browser, "length", str(LENGTH))
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == PROMPT
    count_output_changes(browser)
    browser.find_element(By.ID, "generate").click()

    # the streamed text appears ...
    wait_until(browser, lambda b: text_of(b, "output") != "" or
               text_of(b, "status").startswith("error"), "no text appeared", poll=0.02)
    assert text_of(browser, "output") != "", text_of(browser, "status")
    # ... and the status says done
    wait_until(browser, lambda b: text_of(b, "status") != "generating",
               "the status still says generating")
    status, output = text_of(browser, "status"), text_of(browser, "output")
    assert status == "done", f"status {status!r}; output {output!r}"

    assert len(output) == LENGTH, "no stop string: exactly the length asked for"
    assert set(output) <= trained.vocab, f"characters outside the model's vocabulary: " \
                                         f"{sorted(set(output) - trained.vocab)!r}"
    assert PROMPT not in output, "the prompt is the prime: it is not echoed in the completion"
    # cleared once, then a piece at a time (the server sends a chunk of 32 characters or fewer
    # per event): streamed, not one block at the end
    changes = browser.execute_script("return window.outputChanges")
    assert changes >= 1 + 2, f"the output changed {changes} times: not streamed"
    assert "Traceback" not in server.stderr, server.stderr


def test_generating_again_replaces_the_text(browser, server, trained):
    open_page(browser, server)
    fill(browser, "prompt", PROMPT)
    fill(browser, "length", "40")
    assert generate(browser) == "done"
    first = text_of(browser, "output")
    fill(browser, "length", "7")
    assert generate(browser) == "done"
    second = text_of(browser, "output")
    assert len(first) == 40 and len(second) == 7, (first, second)
    assert set(first + second) <= trained.vocab


def test_a_prompt_the_model_cannot_read_is_an_error_on_the_page(browser, server):
    open_page(browser, server)
    fill(browser, "prompt", "abZ")
    fill(browser, "length", "20")
    status = generate(browser)
    assert status.startswith("error: "), status
    assert "'Z'" in status or "Z" in status.removeprefix("error: "), \
        f"the unknown character is named: {status!r}"
    assert text_of(browser, "output") == ""
    assert "Traceback" not in server.stderr, server.stderr


def test_the_api_key_field(browser, keyed_server, trained):
    # the page is open to anyone who can reach the server; what it asks of the API needs the key
    open_page(browser, keyed_server)
    fill(browser, "prompt", PROMPT)
    fill(browser, "length", "30")
    fill(browser, "key", "wrong-key")
    status = generate(browser)
    assert status.startswith("error: ") and "API key" in status, status
    fill(browser, "key", API_KEY)
    assert generate(browser) == "done"
    output = text_of(browser, "output")
    assert len(output) == 30 and set(output) <= trained.vocab, output

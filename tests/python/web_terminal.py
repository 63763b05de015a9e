"""Drives execd's browser terminal in headless Debian chromium (selenium,
chromedriver) and prints what it saw as one JSON object; the assertions are
in tests/it/web_terminal.rs.

Scenarios:
  session  open /?container=C&cmd=sh (then Open), echo, stty size before
           and after a window resize, a screenshot, then `exit 3` and the
           banner.
  token    the same page on an execd that requires a token: the prompt, a
           refused token, the right one, then echo.
  origin   WebSockets to the pod exec path from this origin and another.
  link     /?container=C&cmd=touch <marker>: what the page shows, whether a
           WebSocket opened or the marker appeared before Open (docker
           exec test -e), the address bar, then Open and the exit banner.
  picker   /?container=P&cmd=sh where P is not first in the list: the
           select before and after Enter opened the session, and the
           session's hostname; also a link to a container not running.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

PATIENCE = 30


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1000,700",
    ]:
        options.add_argument(flag)
    # Console errors (a CSP violation among them) are read back at the end;
    # the performance log has every WebSocket the page creates.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def wait(driver, what, predicate):
    try:
        return WebDriverWait(driver, PATIENCE, poll_frequency=0.1).until(lambda d: predicate(d))
    except Exception:
        rows = driver.execute_script(
            "const r = document.querySelector('.xterm-rows'); return r ? r.innerText : '';"
        )
        state = driver.execute_script("return document.body.dataset.state")
        raise SystemExit(f"timed out waiting for {what}; state={state!r}; rows:\n{rows}")


def rows(driver):
    """The terminal's visible rows, one string each, trailing blanks cut."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.xterm-rows > div'),"
        " d => d.textContent.replace(/\\s+$/, ''));"
    )


def state(driver):
    return driver.execute_script("return document.body.dataset.state")


def type_line(driver, line):
    box = driver.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
    box.send_keys(line)
    box.send_keys(Keys.ENTER)


def wait_row(driver, what, pattern):
    regex = re.compile(pattern)

    def found(d):
        for row in rows(d):
            m = regex.fullmatch(row)
            if m:
                return m
        return None

    return wait(driver, what, found)


def stty_size(driver, tag):
    """`stty size` inside, printed behind a marker so the typed command
    line (which echoes the marker too, but not the digits) cannot match."""
    type_line(driver, f"echo {tag}=$(stty size)")
    m = wait_row(driver, f"stty size {tag}", rf"{tag}=(\d+) (\d+)")
    return [int(m.group(1)), int(m.group(2))]


def screen_size(driver):
    size = driver.execute_script("return document.getElementById('terminal').dataset.size")
    return [int(x) for x in size.split()]


def click_open(driver):
    driver.find_element(By.ID, "open").click()


def open_session(driver, base, container):
    # A link only fills the form; Open runs it.
    driver.get(f"{base}/?container={container}&cmd=sh")
    wait(driver, "the prefilled form", lambda d: state(d) == "prefilled")
    click_open(driver)
    wait(driver, "the session to open", lambda d: state(d) == "open")
    wait_row(driver, "the shell prompt", r".*[#$] ?")


SOCKETS = []


def websockets(driver):
    """URLs of every WebSocket the browser created so far (from the
    performance log, which each read drains)."""
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.webSocketCreated":
            SOCKETS.append(message["params"]["url"])
    return list(SOCKETS)


def in_container(container, path):
    """Whether `path` exists in `container`, asked of the engine directly."""
    probe = subprocess.run(["docker", "exec", container, "test", "-e", path], capture_output=True)
    return probe.returncode == 0


def form(driver):
    """What the form and the spelled-out command show."""
    return driver.execute_script(
        """
        const select = document.getElementById("container");
        const selected = select.selectedOptions[0];
        return {
          href: location.href,
          container: select.value,
          container_text: selected ? selected.textContent : null,
          options: Array.from(select.options, (o) => o.value),
          cmd: document.getElementById("cmd").value,
          confirm_shown: !document.getElementById("confirm").hidden,
          confirm_container: document.getElementById("confirm-container").textContent,
          confirm_cmd: document.getElementById("confirm-cmd").textContent,
        };
        """
    )


def echo(driver):
    type_line(driver, "echo hi-from-browser")
    wait_row(driver, "echo output", r"hi-from-browser")
    return True


def scenario_session(driver, args, out):
    # The picker: a click on the container's row opens a session in it.
    driver.get(f"{args.url}/")
    wait(driver, "the picker", lambda d: state(d) == "picking")
    row = wait(
        driver,
        "the container's row",
        lambda d: next(
            (r for r in d.find_elements(By.CSS_SELECTOR, "#containers tr") if r.text.startswith(args.container)),
            None,
        ),
    )
    out["picker_row"] = row.text
    row.click()
    wait(driver, "the picked session to open", lambda d: state(d) == "open")
    out["picked_url"] = driver.current_url
    open_session(driver, args.url, args.container)
    out["echo_seen"] = echo(driver)
    out["size_before"] = {"screen": screen_size(driver), "stty": stty_size(driver, "before")}
    before = out["size_before"]["screen"]
    driver.set_window_size(700, 450)
    wait(driver, "the terminal to refit", lambda d: screen_size(d) != before)
    # The resize message travels after the refit; stty reads the real tty.
    deadline = time.time() + PATIENCE
    while True:
        after = {"screen": screen_size(driver), "stty": stty_size(driver, f"after{int(time.time()*1000)}")}
        if after["screen"] == after["stty"] or time.time() > deadline:
            break
        time.sleep(0.2)
    out["size_after"] = after
    if args.screenshot:
        driver.save_screenshot(args.screenshot)
    type_line(driver, "exit 3")
    wait(driver, "the exit banner", lambda d: state(d) == "exited")
    out["banner"] = driver.find_element(By.ID, "banner-text").text
    out["banner_button"] = driver.find_element(By.ID, "reconnect").text
    # The banner's button runs the command again in a new session.
    driver.find_element(By.ID, "reconnect").click()
    wait(driver, "the new session", lambda d: state(d) == "open")
    wait_row(driver, "the new shell's prompt", r".*[#$] ?")
    out["rerun_echo_seen"] = echo(driver)
    out["url"] = driver.current_url


def scenario_token(driver, args, out):
    driver.get(f"{args.url}/?container={args.container}&cmd=sh")
    wait(driver, "the token prompt", lambda d: state(d) == "token")
    out["prompted"] = driver.find_element(By.ID, "token-form").is_displayed()
    field = driver.find_element(By.ID, "token")
    field.send_keys("wrong-token")
    field.send_keys(Keys.ENTER)
    wait(
        driver,
        "the refusal",
        lambda d: d.find_element(By.ID, "token-error").text != "",
    )
    out["refusal"] = driver.find_element(By.ID, "token-error").text
    field = driver.find_element(By.ID, "token")
    field.send_keys(args.token)
    field.send_keys(Keys.ENTER)
    wait(driver, "the prefilled form", lambda d: state(d) == "prefilled")
    click_open(driver)
    wait(driver, "the session to open", lambda d: state(d) == "open")
    wait_row(driver, "the shell prompt", r".*[#$] ?")
    out["echo_seen"] = echo(driver)
    out["stored"] = driver.execute_script("return sessionStorage.getItem('execd.token')")
    out["url"] = driver.current_url
    # A reload asks for nothing: the token is kept for the tab (and the
    # reloaded link waits for Open again).
    driver.refresh()
    wait(driver, "the page to load again", lambda d: state(d) in ("prefilled", "open", "token"))
    out["state_after_reload"] = state(driver)


def scenario_link(driver, args, out):
    command = f"touch {args.marker}"
    query = urllib.parse.urlencode({"container": args.container, "cmd": command})
    out["link"] = f"{args.url}/?{query}"
    driver.get(out["link"])
    wait(driver, "the prefilled form", lambda d: state(d) == "prefilled")
    out["before_open"] = form(driver)
    out["state_before_open"] = state(driver)
    # A couple of seconds for anything that would run by itself.
    time.sleep(2)
    out["sockets_before_open"] = websockets(driver)
    out["marker_before_open"] = in_container(args.container, args.marker)
    out["state_after_wait"] = state(driver)
    click_open(driver)
    wait(driver, "the command to run and exit", lambda d: state(d) == "exited")
    out["banner"] = driver.find_element(By.ID, "banner-text").text
    out["sockets_after_open"] = websockets(driver)
    out["marker_after_open"] = in_container(args.container, args.marker)
    out["after_open"] = form(driver)


def scenario_picker(driver, args, out):
    # A container that is not running: the select shows it all the same.
    absent = f"{args.picked}-absent"
    driver.get(f"{args.url}/?container={absent}&cmd=sh")
    wait(driver, "the prefilled form", lambda d: state(d) == "prefilled")
    out["absent"] = form(driver)
    # The picked container comes after another in the list.
    driver.get(f"{args.url}/?container={args.picked}&cmd=sh")
    wait(driver, "the prefilled form", lambda d: state(d) == "prefilled")
    wait(driver, "the container list", lambda d: d.find_elements(By.CSS_SELECTOR, "#containers tr"))
    out["before_open"] = form(driver)
    # Enter in the command field is Open too.
    driver.find_element(By.ID, "cmd").send_keys(Keys.ENTER)
    wait(driver, "the session to open", lambda d: state(d) == "open")
    wait_row(driver, "the shell prompt", r".*[#$] ?")
    type_line(driver, "echo at-$(hostname)")
    out["hostname_seen"] = wait_row(driver, "the hostname", r"at-(\S+)").group(1)
    out["after_open"] = form(driver)


PROBE = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
const ws = new WebSocket(url, ["v5.channel.k8s.io"]);
ws.onopen = () => { ws.close(); done("open"); };
ws.onerror = () => done("error");
"""


def scenario_origin(driver, args, out):
    query = "command=true&stdout=true"
    path = f"/api/v1/namespaces/default/pods/{args.container}/exec?{query}"
    port = args.url.rsplit(":", 1)[1]
    # From execd's own origin (a page without CSP: the 404 body).
    driver.get(f"{args.url}/not-here")
    out["same_origin"] = driver.execute_async_script(PROBE, f"ws://127.0.0.1:{port}{path}")
    # From another origin: localhost and 127.0.0.1 are different sites to a
    # browser, though the same server.
    driver.get(f"http://localhost:{port}/not-here")
    out["cross_origin"] = driver.execute_async_script(PROBE, f"ws://127.0.0.1:{port}{path}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--container", required=True)
    scenarios = {
        "session": scenario_session,
        "token": scenario_token,
        "origin": scenario_origin,
        "link": scenario_link,
        "picker": scenario_picker,
    }
    parser.add_argument("--scenario", required=True, choices=list(scenarios))
    parser.add_argument("--token", default="")
    parser.add_argument("--screenshot", default="")
    parser.add_argument("--marker", default="", help="link: the file the link's command creates")
    parser.add_argument("--picked", default="", help="picker: the container the link names")
    args = parser.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as profile:
        driver = browser(profile)
        driver.set_script_timeout(PATIENCE)
        try:
            scenarios[args.scenario](driver, args, out)
            out["console"] = [
                e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"
            ]
        finally:
            driver.quit()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

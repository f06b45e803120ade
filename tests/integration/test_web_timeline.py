"""The storyboard timeline in a real ComfyUI: the /pfp/storyboard/plan route, then the front-end extension
driven in headless Chromium over the DevTools protocol (skipped when there is no `chromium`)."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bad_inputs import ROUTE_CASES
from comfy_env import comfy_path, comfy_server, stop

from pfp_core.generation.generator import frame_grid
from pfp_core.generation.storyboard import parse_storyboard, plan_chunks

ROUTE = "/pfp/storyboard/plan"
XSS = "<img src=x onerror=alert(1)>"
VALID = f"0s: a cat {XSS} sleeps\n[5s-10s]: the cat wakes up\n12s: the cat eats & purrs"
INVALID = "0s: a cat sleeps\n# comment\n12s: the cat wakes\n8s: too early"  # line 4 goes back in time
# Markup that would set window.pfpInjected if it were ever parsed as HTML (an <img> handler or a <script>)
PAYLOAD = '<img src=x onerror="window.pfpInjected=1"><script>window.pfpInjected=2</script><b>bold</b>'
INJECTED_ERROR = f"3s: a cat\n1s: {PAYLOAD}"  # line 2 goes back in time: the error quotes it, the line is shown


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy_path()
    with comfy_server(tmp_path_factory.mktemp("comfy")) as running:
        yield running


def request(storyboard: str, **overrides) -> dict:
    return {"storyboard": storyboard, "global_prompt": "", "seconds": 20.0, "fps": 16.0, "chunk_seconds": 5.0,
            **overrides}


def segments(chunks: list) -> list[list]:
    """Consecutive chunks with the same prompt: what the timeline draws as one segment."""
    groups: list[list] = []
    for chunk in chunks:
        if groups and groups[-1][0].prompt == chunk.prompt:
            groups[-1].append(chunk)
        else:
            groups.append([chunk])
    return groups


def node_plan(body: dict) -> list:
    """What nodes/storyboard_node.plan computes (it cannot be imported without comfy)."""
    total_frames, chunk_frames = frame_grid(body["seconds"], body["chunk_seconds"], body["fps"])
    fps = body["fps"]
    return plan_chunks(parse_storyboard(body["storyboard"], body["global_prompt"]), total_frames / fps,
                       chunk_frames / fps)


# ---------------------------------------------------------------------------------------------- the route

@pytest.mark.parametrize("overrides", [{}, {"global_prompt": "cinematic", "seconds": 17.3, "fps": 12, "chunk_seconds": 4}])
def test_route_plans_like_the_node(server, overrides):
    body = request(VALID, **overrides)
    status, answer = server.post(ROUTE, body)
    assert status == 200, answer
    expected = node_plan(body)
    assert [(c["index"], c["prompt"], c["segment_line"]) for c in answer["chunks"]] == \
        [(c.index, c.prompt, c.segment_line) for c in expected]
    bounds = [t for c in answer["chunks"] for t in (c["start"], c["end"])]
    assert bounds == pytest.approx([t for c in expected for t in (c.start, c.end)])
    assert answer["plan_text"].count("\n") == len(expected) - 1
    assert XSS in answer["chunks"][0]["prompt"]  # the server returns text; escaping is the front end's job
    shared = body["global_prompt"]
    assert answer["global_prompt"] == shared
    assert [c["label"] for c in answer["chunks"]] == [c.prompt.removeprefix(f"{shared}, ") if shared else c.prompt
                                                      for c in expected]


def test_route_shows_a_camera_return_with_its_way_back(server):
    """The timeline labels a return with the direction the plan gives the model, not the words as typed."""
    status, answer = server.post(ROUTE, request("0s: camera pans right / 10s: camera comes back"))
    assert status == 200, answer
    assert [c["label"] for c in answer["chunks"]] == ["camera pans right"] * 2 + ["camera comes back left"] * 2
    assert "camera comes back left" in answer["plan_text"]


def test_route_reports_the_storyboard_error_and_its_line(server):
    status, answer = server.post(ROUTE, request(INVALID))
    assert status == 200, answer
    assert answer["line"] == 4
    assert answer["error"].startswith("storyboard line 4 ") and "\n" not in answer["error"]
    status, answer = server.post(ROUTE, request("", global_prompt=""))
    assert status == 200 and answer["line"] is None and answer["error"].startswith("storyboard: empty")


@pytest.mark.parametrize("case", ROUTE_CASES, ids=lambda c: c.name)
def test_route_rejects_a_bad_body_naming_the_field(server, case):
    """The catalog's route cases (tests/bad_inputs.py) through the real aiohttp handler."""
    req = urllib.request.Request(server.url + ROUTE, case.body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=30)
    assert caught.value.code == 400
    message = json.loads(caught.value.read())["error"]
    assert message.startswith(f"{case.field}:") and "\n" not in message, message


# --------------------------------------------------------------------- a minimal DevTools protocol client

class DevTools:
    """Just enough RFC 6455 (client side, text frames) to speak the Chrome DevTools protocol to one page."""

    def __init__(self, ws_url: str, timeout: float = 60):
        host_port, path = ws_url.removeprefix("ws://").split("/", 1)
        host, port = host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id, self.events = 0, []

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools websocket closed")
            data += chunk
        return data

    def _recv_message(self) -> dict:
        payload = b""
        while True:
            b0, b1 = self._recv_exact(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._recv_exact(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._recv_exact(8))[0]
            payload += self._recv_exact(length)  # the server never masks
            if b0 & 0x0F == 0x8:
                raise ConnectionError("DevTools websocket closed")
            if b0 & 0x80:  # FIN: the message is complete (continuation frames just append)
                return json.loads(payload)

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(data)  # FIN + text opcode, then the masked length (clients must mask)
        if n < 126:
            header = bytes([0x81, 0x80 | n])
        elif n < 65536:
            header = bytes([0x81, 0x80 | 126]) + struct.pack(">H", n)
        else:
            header = bytes([0x81, 0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:
            message = self._recv_message()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page JS failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120, what: str = ""):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what or expression}")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))


@contextlib.contextmanager
def chromium_page(tmp: Path, url: str):
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("no `chromium` on PATH; the front-end half of the timeline test needs it")
    profile = tmp / "chromium-profile"
    profile.mkdir()
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            "--window-size=1280,800", url]
    with open(tmp / "chromium.log", "w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"chromium did not start: {(tmp / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            page = next(t for t in json.loads(response.read()) if t["type"] == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        devtools.send("Page.enable")
        devtools.send("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
        yield devtools
        devtools.sock.close()
    finally:
        stop(process)


# ------------------------------------------------------------------------------------------ the front end

def neutral(colour: str) -> bool:
    """A slate tone, not a hue that reads as an error: the channels of 'rgb(r, g, b)' stay within 40 of each other."""
    channels = [int(v) for v in colour.removeprefix("rgb(").removesuffix(")").split(",")]
    return max(channels) - min(channels) <= 40

TIMELINE = "document.querySelector('.pfp-timeline')"
READ_TIMELINE = f"""(() => {{
  const root = {TIMELINE};
  if (!root) return null;
  return {{
    summary: root.querySelector('.pfp-timeline-summary')?.textContent ?? null,
    segments: [...root.querySelectorAll('.pfp-timeline-seg')].map(s => ({{
      chunks: s.dataset.chunks, time: s.querySelector('.pfp-timeline-time').textContent,
      prompt: s.querySelector('.pfp-timeline-prompt').textContent, width: s.getBoundingClientRect().width,
      colour: s.style.background}})),
    error: root.querySelector('.pfp-timeline-error')?.textContent ?? null,
    badLine: root.querySelector('.pfp-timeline-line.bad')?.textContent ?? null,
    elements: [...root.querySelectorAll('*')].map(e => e.tagName.toLowerCase()),
    visible: root.getBoundingClientRect().height > 0,
  }};
}})()"""


def test_timeline_in_the_real_front_end(server, tmp_path):
    # A fresh user directory would open the template browser over the canvas on first load.
    server.post("/settings/Comfy.TutorialCompleted", True)
    with chromium_page(tmp_path, server.url) as page:
        page.wait_for("!!(window.app && app.graph && window.LiteGraph && app.canvas && "
                      "app.extensions.some(e => e.name === 'pfp.storyboardTimeline') && "
                      "LiteGraph.registered_node_types['PFPStoryboardPrompt'])", what="the front end and the extension")
        page.evaluate(f"""(() => {{
          app.graph.clear();
          const node = LiteGraph.createNode('PFPStoryboardPrompt');
          node.pos = [40, 100];  // below the workflow tabs
          app.graph.add(node);
          node.setSize([720, Math.max(node.size[1], 560)]);
          app.canvas.ds.scale = 1; app.canvas.ds.offset = [0, 0];
          window.pfpNode = node;
          node.widgets.find(w => w.name === 'storyboard').value = {json.dumps(VALID)};
          app.canvas.setDirty(true, true);
        }})()""")
        expected = segments(node_plan(request(VALID)))
        state = page.wait_for(f"(() => {{ const s = {READ_TIMELINE};"
                              f" return s && s.segments.length === {len(expected)} && s.visible"
                              f" && s.segments[0].prompt.includes('<img') ? s : null; }})()",
                              timeout=60, what="the timeline segments")
        time.sleep(1)  # let the DOM-widget overlay settle on the canvas before the screenshot
        page.screenshot(tmp_path / "timeline.png")
        print(f"screenshot: {tmp_path / 'timeline.png'}")

        assert [s["prompt"] for s in state["segments"]] == [group[0].prompt for group in expected]
        assert [s["chunks"] for s in state["segments"]] == [f"{g[0].index}-{g[-1].index}" for g in expected]
        assert state["segments"][0]["prompt"] == f"a cat {XSS} sleeps"  # shown as text ...
        assert "img" not in state["elements"]  # ... so no <img> element was created
        assert not [e for e in page.events if e.get("method") == "Page.javascriptDialogOpening"]  # no alert(1)
        assert state["segments"][0]["time"] == "0s–5s" and state["segments"][-1]["time"] == "10s–20s"
        widths = [s["width"] for s in state["segments"]]
        assert 1.8 * widths[0] < widths[-1] < 2.2 * widths[0]  # width follows duration: 10 s against 5 s
        colours = [s["colour"] for s in state["segments"]]
        assert colours[1] != colours[0] and all(neutral(c) for c in colours), colours
        assert state["error"] is None

        # Typing into the textarea (real input events) redraws with the error and its line.
        page.evaluate("(() => { const t = pfpNode.widgets.find(w => w.name === 'storyboard').inputEl;"
                      " t.focus(); t.select(); })()")
        page.send("Input.insertText", text=INVALID)
        state = page.wait_for(f"(() => {{ const s = {READ_TIMELINE}; return s && s.error ? s : null; }})()",
                              timeout=60, what="the error")
        time.sleep(1)
        page.screenshot(tmp_path / "timeline_error.png")
        assert state["error"].startswith("storyboard line 4 ")
        assert state["badLine"] == "4 │ 8s: too early"
        assert state["segments"] == []

        # Markup in the failing line is shown as text in the error and in the highlighted line, never parsed.
        page.evaluate("(() => { const t = pfpNode.widgets.find(w => w.name === 'storyboard').inputEl;"
                      " t.focus(); t.select(); })()")
        page.send("Input.insertText", text=INJECTED_ERROR)
        state = page.wait_for(f"(() => {{ const s = {READ_TIMELINE}; return s && s.badLine && s.badLine.startsWith('2') "
                              "? s : null; })()", timeout=60, what="the error on the injected line")
        assert state["error"].startswith("storyboard line 2 ('1s: <img src=x onerror=")
        assert state["badLine"] == f"2 │ 1s: {PAYLOAD}"
        assert not {"img", "script", "b"} & set(state["elements"]), state["elements"]

        # A changed number widget (through its callback) replans: 20 s in 2.5 s chunks is 8 chunks in 4 segments.
        # The global prompt, with markup, is shown once in the summary, as text; labels start with their own prompt.
        page.evaluate(f"""(() => {{
          pfpNode.widgets.find(w => w.name === 'storyboard').value = {json.dumps(VALID)};
          pfpNode.widgets.find(w => w.name === 'global_prompt').value = {json.dumps(PAYLOAD)};
          const w = pfpNode.widgets.find(w => w.name === 'chunk_seconds'); w.value = 2.5; w.callback(2.5);
        }})()""")
        body = request(VALID, global_prompt=PAYLOAD, chunk_seconds=2.5)
        expected = segments(node_plan(body))
        state = page.wait_for(f"(() => {{ const s = {READ_TIMELINE}; return s && s.summary?.startsWith('8 chunks') ? s : null; }})()",
                              timeout=60, what="8 chunks after chunk_seconds = 2.5")
        assert len(state["segments"]) == len(expected) == 4
        assert state["summary"].endswith(f"global: {PAYLOAD}")
        assert [s["prompt"] for s in state["segments"]] == [g[0].prompt.removeprefix(f"{PAYLOAD}, ") for g in expected]
        assert not {"img", "script", "b"} & set(state["elements"]), state["elements"]
        time.sleep(1)  # a parsed <img> would fire its onerror within this time
        assert page.evaluate("window.pfpInjected === undefined")
        assert not [e for e in page.events if e.get("method") == "Page.javascriptDialogOpening"]
        # Control: the same payload through innerHTML does run here, so the checks above can catch a regression.
        page.evaluate(f"(() => {{ const d = document.createElement('div'); d.innerHTML = {json.dumps(PAYLOAD)};"
                      " document.body.appendChild(d); window.pfpControl = d; })()")
        assert page.wait_for("window.pfpInjected === 1", timeout=30, what="the control payload to run")
        page.evaluate("window.pfpControl.remove()")

        # The timeline widget stays out of the prompt and the saved workflow.
        prompt = page.evaluate("app.graphToPrompt().then(p => p.output[String(pfpNode.id)].inputs)")
        assert set(prompt) >= {"storyboard", "seconds", "chunk_seconds"} and "pfp_timeline" not in prompt
        saved = page.evaluate("pfpNode.serialize().widgets_values")
        assert len([v for v in saved if v is not None]) == 6  # the node's six widgets, nothing for the timeline

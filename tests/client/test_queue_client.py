"""The ComfyUI batch client without ComfyUI: job planning, websocket framing against a real loopback socket server,
HTTP error parsing against a real http.server, and whole jobs against a small fake ComfyUI."""
import base64
import hashlib
import json
import os
import queue
import re
import socket
import struct
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pfp_core.cli import main
from pfp_core.client.queue_client import (ComfyClient, Job, JobResult, QueueError, Server, WebSocket, distinct_names,
                                          follow, format_summary, load_workflow, output_files, parse_override,
                                          parse_server, plan_jobs, prompt_error_message, run_jobs, seed_list,
                                          websocket_accept)
from pfp_core.generation.storyboard import read_storyboard

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 0, "strength": 0.5}},
    "3": {"class_type": "RandomNoise", "inputs": {"noise_seed": 4}},
    "4": {"class_type": "PFPStoryboardPrompt", "inputs": {"storyboard": "0s: a cat", "seconds": 4.0}},
    "5": {"class_type": "PFPAutoregressiveSampler", "inputs": {"storyboard": ["4", 0], "seed": ["6", 0], "steps": 8}},
    "6": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "pfp"}},
}

# Recorded from ComfyUI 0.3.64: POST /prompt with EmptyImage width=0, and with an unknown class_type.
REJECTED_WIDTH = (b'{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", '
                  b'"details": "", "extra_info": {}}, "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min", '
                  b'"message": "Value 0 smaller than min of 1", "details": "width", "extra_info": {"input_name": "width", '
                  b'"input_config": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}], "received_value": 0}}], '
                  b'"dependent_outputs": ["2"], "class_type": "EmptyImage"}}}')
REJECTED_CLASS = (b'{"error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does not exist.", '
                  b'"details": "Node ID \'#1\'", "extra_info": {}}, "node_errors": {}}')


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


# --- planning -------------------------------------------------------------------------------------------------------

def test_seeds_set_every_unlinked_seed_and_noise_seed_and_report_the_nodes():
    plan = plan_jobs(WORKFLOW, [11, 12], [], [])
    assert [job.seed for job in plan.jobs] == [11, 12] and [job.name for job in plan.jobs] == ["0_11", "1_12"]
    for job in plan.jobs:
        assert job.prompt["2"]["inputs"]["seed"] == job.seed and job.prompt["3"]["inputs"]["noise_seed"] == job.seed
        assert job.prompt["5"]["inputs"]["seed"] == ["6", 0]  # a wired seed keeps its wire
    assert plan.changed == {"--seeds/--count": ["2.seed (ImageAddNoise)", "3.noise_seed (RandomNoise)"]}
    assert WORKFLOW["2"]["inputs"]["seed"] == 0  # the caller's workflow is not modified


def test_jobs_are_the_product_of_seeds_and_storyboards():
    plan = plan_jobs(WORKFLOW, [1, 2], ["0s: a dog", "0s: a bird"], [])
    assert [(job.index, job.seed, job.storyboard) for job in plan.jobs] == [
        (0, 1, "0s: a dog"), (1, 1, "0s: a bird"), (2, 2, "0s: a dog"), (3, 2, "0s: a bird")]
    assert [job.prompt["4"]["inputs"]["storyboard"] for job in plan.jobs] == ["0s: a dog", "0s: a bird"] * 2
    assert all(job.prompt["5"]["inputs"]["storyboard"] == ["4", 0] for job in plan.jobs)
    assert plan.changed["--storyboard"] == ["4.storyboard (PFPStoryboardPrompt)"]


def test_storyboards_alone_and_no_variation_at_all():
    only_storyboards = plan_jobs(WORKFLOW, [], ["0s: a", "0s: b"], [])
    assert [(job.seed, job.name) for job in only_storyboards.jobs] == [(None, "0"), (None, "1")]
    plain = plan_jobs(WORKFLOW, [], [], [])
    assert len(plain.jobs) == 1 and plain.jobs[0].prompt == WORKFLOW and plain.changed == {}


def test_set_parses_json_and_falls_back_to_text():
    overrides = [parse_override("1.width=128"), parse_override("7.filename_prefix=runs/a=b"),
                 parse_override('4.storyboard="0s: quoted"'), parse_override("2.strength=0.25")]
    plan = plan_jobs(WORKFLOW, [5], [], overrides)
    prompt = plan.jobs[0].prompt
    assert prompt["1"]["inputs"]["width"] == 128 and prompt["2"]["inputs"]["strength"] == 0.25
    assert prompt["7"]["inputs"]["filename_prefix"] == "runs/a=b"
    assert prompt["4"]["inputs"]["storyboard"] == "0s: quoted"
    assert plan.changed["--set"][0] == "1.width (EmptyImage)"


def test_seeds_override_a_seed_given_with_set():
    plan = plan_jobs(WORKFLOW, [9], [], [parse_override("2.seed=1")])
    assert plan.jobs[0].prompt["2"]["inputs"]["seed"] == 9


@pytest.mark.parametrize("make_plan,words", [
    (lambda: plan_jobs(WORKFLOW, [], [], [parse_override("99.steps=8")]), ["--set 99.steps", "no node '99'"]),
    (lambda: plan_jobs(WORKFLOW, [], [], [parse_override("1.stpes=8")]), ["--set 1.stpes", "EmptyImage", "width"]),
    (lambda: parse_override("1steps=8"), ["--set 1steps=8", "NODE_ID.INPUT=VALUE"]),
    (lambda: parse_override("1.steps"), ["--set 1.steps", "NODE_ID.INPUT=VALUE"]),
    (lambda: plan_jobs({"1": WORKFLOW["1"]}, [1], [], []), ["--seeds/--count", "seed or noise_seed"]),
    (lambda: plan_jobs({"2": WORKFLOW["2"]}, [], ["x"], []), ["--storyboard", "storyboard"]),
    (lambda: parse_server("localhost"), ["--server localhost", "HOST:PORT"]),
    (lambda: parse_server("127.0.0.1:99999"), ["--server 127.0.0.1:99999"]),
])
def test_planning_errors_are_one_line_and_name_the_option(make_plan, words):
    with pytest.raises(ValueError) as error:
        make_plan()
    assert len(str(error.value).splitlines()) == 1 and all(word in str(error.value) for word in words)


def test_seed_list_and_servers():
    assert seed_list([3, 1], None, 0) == [3, 1]
    assert seed_list(None, 3, 10) == [10, 11, 12]
    assert seed_list(None, None, 0) == []
    assert parse_server("127.0.0.1:8188") == Server("127.0.0.1", 8188)
    assert str(parse_server("[::1]:8188")) == "[::1]:8188"


def test_workflow_files_must_be_api_format(tmp_path):
    api, ui, other = tmp_path / "api.json", tmp_path / "ui.json", tmp_path / "other.json"
    api.write_text(json.dumps(WORKFLOW))
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    other.write_text("[1, 2]")
    assert load_workflow(api) == WORKFLOW
    with pytest.raises(ValueError, match="UI workflow"):
        load_workflow(ui)
    with pytest.raises(ValueError, match="API format"):
        load_workflow(other)


def test_storyboard_values_are_files_or_text(tmp_path):
    story = tmp_path / "story.txt"
    story.write_text("0s: from a file")
    assert read_storyboard(str(story)) == "0s: from a file"
    long_text = "0s: " + "a very long scene " * 40  # longer than a file name may be
    assert read_storyboard(long_text) == long_text


def test_cli_rejects_bad_plans_in_one_line_before_contacting_servers(tmp_path, capsys):
    workflow = tmp_path / "api.json"
    workflow.write_text(json.dumps(WORKFLOW))
    port = free_port()
    for args, words in ((["--set", "42.steps=8"], ["--set 42.steps"]), (["--seed-start", "3"], ["--seed-start"])):
        code = main(["queue", "--workflow", str(workflow), "--server", f"127.0.0.1:{port}", *args])
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1 and all(word in err for word in words)


# --- websocket framing against a real socket server -----------------------------------------------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame as RFC 6455 5.2 lays it out, written independently of the client under test."""
    first = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        return first + bytes([len(payload)]) + payload
    if len(payload) < 1 << 16:
        return first + bytes([126]) + struct.pack("!H", len(payload)) + payload
    return first + bytes([127]) + struct.pack("!Q", len(payload)) + payload


def read_client_frame(conn: socket.socket) -> tuple[int, bool, bytes]:
    """(opcode, masked, unmasked payload) of one client frame; client frames here are short control frames."""
    first, second = recv_exact(conn, 2)
    assert second & 0x7F < 126
    mask = recv_exact(conn, 4) if second & 0x80 else b"\0\0\0\0"
    payload = recv_exact(conn, second & 0x7F)
    return first & 0x0F, bool(second & 0x80), bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def recv_exact(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        assert chunk, "client closed early"
        data += chunk
    return data


def handshake_answer(key: bytes, accept: bytes | None = None) -> bytes:
    accept = accept or base64.b64encode(hashlib.sha1(key + GUID).digest())
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " \
           + accept + b"\r\n\r\n"


class WebSocketServer:
    """Accepts one client on 127.0.0.1, answers its handshake (the first frames ride in the same packet), sends the
    given frames, then records the client's frames until the client closes."""

    def __init__(self, frames: list[bytes], accept: bytes | None = None, close_after: bool = True):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.request, self.received = b"", []
        self.thread = threading.Thread(target=self._serve, args=(frames, accept, close_after), daemon=True)
        self.thread.start()

    def _serve(self, frames: list[bytes], accept: bytes | None, close_after: bool) -> None:
        with self.listener, self.listener.accept()[0] as conn:
            conn.settimeout(10)
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(4096)
            key = re.search(rb"Sec-WebSocket-Key: (\S+)\r\n", self.request).group(1)
            conn.sendall(handshake_answer(key, accept) + b"".join(frames[:1]))
            for frame in frames[1:]:
                conn.sendall(frame)
            while close_after:
                opcode, masked, payload = read_client_frame(conn)
                self.received.append((opcode, masked, payload))
                close_after = opcode != 0x8

    def join(self) -> None:
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_accept_key_matches_the_rfc_example():
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_websocket_decodes_text_binary_long_fragmented_and_answers_ping_with_masked_pong():
    medium, large = os.urandom(300), os.urandom(70_000)  # 16-bit and 64-bit payload lengths
    frames = [server_frame(0x1, b'{"type": "status"}'),
              server_frame(0x2, medium),
              server_frame(0x2, large),
              server_frame(0x1, "frag".encode(), fin=False),
              server_frame(0x9, b"are you there"),  # a control frame in the middle of a fragmented message
              server_frame(0x0, "men".encode(), fin=False),
              server_frame(0x0, "t \u2713".encode()),
              server_frame(0x8, struct.pack("!H", 1000) + b"bye")]
    server = WebSocketServer(frames)
    with WebSocket.connect("127.0.0.1", server.port, "/ws?clientId=abc", timeout=10) as ws:
        assert ws.recv() == '{"type": "status"}'
        assert ws.recv() == medium
        assert ws.recv() == large
        assert ws.recv() == "fragment \u2713"
        assert ws.recv() is None
    server.join()
    assert server.request.startswith(b"GET /ws?clientId=abc HTTP/1.1\r\n")
    assert b"Upgrade: websocket\r\n" in server.request and b"Sec-WebSocket-Version: 13\r\n" in server.request
    assert server.received == [(0xA, True, b"are you there"), (0x8, True, struct.pack("!H", 1000))]


def test_websocket_rejects_a_wrong_accept_key():
    server = WebSocketServer([], accept=b"d3JvbmcgYWNjZXB0IGtleQ==", close_after=False)
    with pytest.raises(QueueError, match="Sec-WebSocket-Accept"):
        WebSocket.connect("127.0.0.1", server.port, "/ws", timeout=10)
    server.join()


def test_websocket_rejects_masked_server_frames():
    masked = bytes([0x81, 0x80 | 2]) + b"\1\2\3\4" + b"hi"
    server = WebSocketServer([masked])
    with WebSocket.connect("127.0.0.1", server.port, "/ws", timeout=10) as ws, pytest.raises(QueueError, match="mask"):
        ws.recv()
    server.join()


def test_websocket_recv_times_out_when_the_server_is_silent():
    server = WebSocketServer([])
    with WebSocket.connect("127.0.0.1", server.port, "/ws", timeout=0.3) as ws, pytest.raises(TimeoutError):
        ws.recv()
    server.join()


def test_websocket_connection_refused_names_the_server():
    port = free_port()
    with pytest.raises(QueueError, match=f"cannot connect to 127.0.0.1:{port}"):
        WebSocket.connect("127.0.0.1", port, "/ws", timeout=5)


# --- events of one prompt -------------------------------------------------------------------------------------------

class ScriptedSocket:
    def __init__(self, messages: list):
        self.messages = [json.dumps(m) if isinstance(m, dict) else m for m in messages]

    def recv(self):
        return self.messages.pop(0) if self.messages else None


def event(kind: str, **data) -> dict:
    return {"type": kind, "data": data}


def test_follow_reports_progress_and_ends_at_the_final_executing():
    lines = []
    messages = [event("status", status={}, sid="x"), event("execution_start", prompt_id="P"),
                event("executing", node="1", prompt_id="P"), b"\x00\x00\x00\x01preview",
                event("progress", value=1, max=2, prompt_id="P", node="1"),
                event("progress", value=1, max=9, prompt_id="other", node="1"),
                event("execution_success", prompt_id="P"), event("executing", node=None, prompt_id="P"),
                event("executing", node="7", prompt_id="P")]
    ws = ScriptedSocket(messages)
    follow(ws, WORKFLOW, "P", lines.append)
    assert lines == ["executing node 1 (EmptyImage)", "progress 1/2 node 1 (EmptyImage)", "execution finished"]
    assert len(ws.messages) == 1  # stopped at the final executing


@pytest.mark.parametrize("messages,words", [
    ([event("execution_error", prompt_id="P", node_id="2", node_type="ImageAddNoise", exception_type="ValueError",
            exception_message="bad seed\nSome tips here")],
     ["node 2 (ImageAddNoise)", "ValueError", "bad seed"]),
    ([event("execution_interrupted", prompt_id="other", node_id="1", node_type="EmptyImage"),
      event("execution_interrupted", prompt_id="P", node_id="7", node_type="SaveImage")], ["interrupted", "node 7"]),
    ([event("executing", node="1", prompt_id="P")], ["closed the websocket"]),
])
def test_follow_turns_failures_into_one_line_errors(messages, words):
    with pytest.raises(QueueError) as error:
        follow(ScriptedSocket(messages), WORKFLOW, "P", lambda line: None)
    assert len(str(error.value).splitlines()) == 1 and all(word in str(error.value) for word in words)


# --- HTTP against a real http.server --------------------------------------------------------------------------------

class RecordedComfy(BaseHTTPRequestHandler):
    """Answers from `routes` (path -> (status, body)), recording each request path."""
    routes: dict[str, tuple[int, bytes]] = {}
    seen: list[str] = []

    def do_GET(self):
        self.seen.append(self.path)
        status, body = self.routes.get(self.path.split("?")[0], (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def recorded_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RecordedComfy)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RecordedComfy.seen = []
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("body,expected", [
    (REJECTED_WIDTH, "node 1 (EmptyImage): Value 0 smaller than min of 1 (width)"),
    (REJECTED_CLASS, "Cannot execute because node NoSuchNode does not exist. (Node ID '#1')"),
])
def test_rejected_prompt_gives_one_line_naming_node_and_field(recorded_server, body, expected):
    RecordedComfy.routes = {"/prompt": (400, body)}
    client = ComfyClient(Server("127.0.0.1", recorded_server.server_port), timeout=10)
    with pytest.raises(QueueError) as error:
        client.post_prompt(WORKFLOW, "client")
    assert str(error.value) == expected


def test_prompt_error_message_survives_a_body_that_is_not_json():
    assert prompt_error_message(500, b"500 Internal Server Error\nServer got itself in trouble") == \
        "HTTP 500: 500 Internal Server Error"


def test_outputs_of_the_same_name_get_distinct_files():
    refs = [{"filename": "v.mp4", "subfolder": "a"}, {"filename": "v.mp4", "subfolder": "b"},
            {"filename": "x/v.mp4"}, {"filename": "v_2.mp4"}, {"filename": ""}]
    assert distinct_names(refs) == ["v.mp4", "v_2.mp4", "v_3.mp4", "v_2_2.mp4", "output"]


def test_history_outputs_are_downloaded_into_the_job_folder(recorded_server, tmp_path):
    entry = {"outputs": {"7": {"images": [{"filename": "a.png", "subfolder": "run 1", "type": "output"},
                                          {"filename": "../b.png", "subfolder": "", "type": "temp"}],
                               "text": ["not a file"], "animated": [False]}},
             "status": {"status_str": "success", "completed": True}}
    RecordedComfy.routes = {"/history/P1": (200, json.dumps({"P1": entry}).encode()), "/view": (200, b"PNG bytes")}
    client = ComfyClient(Server("127.0.0.1", recorded_server.server_port), timeout=10)
    refs = output_files(client.history("P1"))
    files = [client.download(ref, tmp_path / name) for ref, name in zip(refs, distinct_names(refs))]
    assert files == [tmp_path / "a.png", tmp_path / "b.png"] and files[1].read_bytes() == b"PNG bytes"
    queries = [urllib.parse.parse_qs(urllib.parse.urlsplit(path).query) for path in RecordedComfy.seen[1:]]
    assert queries[0] == {"filename": ["a.png"], "subfolder": ["run 1"], "type": ["output"]}
    with pytest.raises(QueueError, match="no history"):
        RecordedComfy.routes["/history/P2"] = (200, b"{}")
        client.history("P2")


def test_http_connection_refused_names_the_server():
    port = free_port()
    with pytest.raises(QueueError, match=f"cannot reach ComfyUI at 127.0.0.1:{port}"):
        ComfyClient(Server("127.0.0.1", port), timeout=5).history("P")


# --- whole jobs against a fake ComfyUI ------------------------------------------------------------------------------

class FakeComfyHandler(BaseHTTPRequestHandler):
    """ComfyUI's side of /ws, /prompt, /history and /view for one-node prompts; `silent` servers never send events."""

    def do_GET(self):
        fake: FakeComfy = self.server
        path, _, query = self.path.partition("?")
        params = urllib.parse.parse_qs(query)
        if path == "/ws":
            events = fake.sockets.setdefault(params["clientId"][0], queue.Queue())
            self.wfile.write(handshake_answer(self.headers["Sec-WebSocket-Key"].encode()))
            for message in iter(events.get, None):
                self.wfile.write(server_frame(0x1, json.dumps(message).encode()))
            self.close_connection = True
            return
        if path.startswith("/history/"):
            prompt_id = path.removeprefix("/history/")
            ref = {"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}
            self.answer(json.dumps({prompt_id: {"outputs": {"3": {"images": [ref]}},
                                                "status": {"status_str": "success"}}}).encode())
        else:
            self.answer(f"image {params['filename'][0]}".encode())

    def do_POST(self):
        fake: FakeComfy = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt_id = f"{fake.name}{len(fake.prompts)}"
        fake.prompts.append(body["prompt"])
        if fake.prompt_answer is not None:
            return self.answer(fake.prompt_answer)
        if not fake.silent:
            for message in (event("executing", node="2", prompt_id=prompt_id),
                            event("progress", value=1, max=1, node="2", prompt_id=prompt_id),
                            event("execution_success", prompt_id=prompt_id),
                            event("executing", node=None, prompt_id=prompt_id), None):
                fake.sockets[body["client_id"]].put(message)
        self.answer(json.dumps({"prompt_id": prompt_id, "number": 0, "node_errors": {}}).encode())

    def answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class FakeComfy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, silent: bool = False, prompt_answer: bytes | None = None):
        super().__init__(("127.0.0.1", 0), FakeComfyHandler)
        self.name, self.silent, self.prompt_answer = name, silent, prompt_answer  # prompt_answer: POST /prompt's body
        self.sockets: dict[str, queue.Queue] = {}
        self.prompts: list[dict] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> Server:
        return Server("127.0.0.1", self.server_port)

    def stop(self) -> None:
        for events in self.sockets.values():
            events.put(None)  # releases websocket handlers that are still waiting for events
        self.shutdown()
        self.server_close()


def test_jobs_go_round_robin_and_outputs_land_in_job_folders(tmp_path):
    servers = [FakeComfy("a"), FakeComfy("b")]
    lines = []
    try:
        jobs = plan_jobs(WORKFLOW, [1, 2, 3], [], []).jobs
        results = run_jobs(jobs, [s.address for s in servers], tmp_path, timeout=10, report=lines.append)
    finally:
        for server in servers:
            server.stop()
    assert [prompt["2"]["inputs"]["seed"] for prompt in servers[0].prompts] == [1, 3]
    assert [prompt["2"]["inputs"]["seed"] for prompt in servers[1].prompts] == [2]
    assert [(r.status, r.server) for r in results] == [("ok", servers[0].address), ("ok", servers[1].address),
                                                       ("ok", servers[0].address)]
    assert (tmp_path / "2_3" / "a1.png").read_bytes() == b"image a1.png"
    assert [r.files for r in results] == [[tmp_path / "0_1" / "a0.png"], [tmp_path / "1_2" / "b0.png"],
                                          [tmp_path / "2_3" / "a1.png"]]
    assert f"[job 1 seed 2 @ {servers[1].address}] progress 1/1 node 2 (ImageAddNoise)" in lines


def test_a_silent_server_fails_its_job_after_the_timeout_in_one_line(tmp_path):
    server = FakeComfy("s", silent=True)
    try:
        (result,) = run_jobs(plan_jobs(WORKFLOW, [1], [], []).jobs, [server.address], tmp_path, 0.5, lambda line: None)
    finally:
        server.stop()
    assert result.status == "failed" and result.error == f"no message from {server.address} for 0.5 s"


@pytest.mark.parametrize("answer", [b"{}", b'["queued"]', b'{"prompt_id": {"id": 1}}', b"null"])
def test_well_formed_but_unexpected_json_fails_each_job_and_the_worker_goes_on(answer, tmp_path):
    server = FakeComfy("odd", prompt_answer=answer)
    try:
        results = run_jobs(plan_jobs(WORKFLOW, [1, 2], [], []).jobs, [server.address], tmp_path, 5, lambda line: None)
    finally:
        server.stop()
    assert [r.status for r in results] == ["failed", "failed"] and len(server.prompts) == 2
    assert all(r.error.startswith(f"unexpected answer from {server.address} (") for r in results), results[0].error


def test_summary_table_has_one_row_per_job():
    job = Job(0, 7, None, {})
    table = format_summary([JobResult(job, Server("127.0.0.1", 8188), "ok", 1.34, [Path("a.png")]),
                            JobResult(Job(1, None, None, {}), Server("h", 1), "failed", 0.0, error="x")])
    assert table.splitlines() == ["job  server          seed  status  seconds  files",
                                  "0    127.0.0.1:8188  7     ok      1.3      1",
                                  "1    h:1             -     failed  0.0      0"]

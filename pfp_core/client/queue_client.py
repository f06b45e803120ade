"""Batch client for ComfyUI servers: queue an API-format workflow with varied seeds and storyboards, follow each prompt
over the websocket, download its outputs. Standard library only (no aiohttp, no websocket package): runs anywhere."""
from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import os
import shutil
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Callable, Sequence

from .. import limits

Workflow = dict[str, dict]

SEED_INPUTS = ("seed", "noise_seed")
STORYBOARD_INPUTS = ("storyboard",)
SEEDS_FLAG, STORYBOARD_FLAG = "--seeds/--count", "--storyboard"


class QueueError(ValueError):
    """A one-line problem with a workflow, a server or a prompt (the CLI prints ValueErrors as one line)."""


# --- workflow and job planning --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Override:
    """One --set NODE_ID.INPUT=VALUE."""
    node_id: str
    input_name: str
    value: object


@dataclass(frozen=True)
class Job:
    index: int
    seed: int | None
    storyboard: str | None
    prompt: Workflow

    @property
    def name(self) -> str:
        """Folder name for this job's outputs."""
        return str(self.index) if self.seed is None else f"{self.index}_{self.seed}"


@dataclass(frozen=True)
class JobPlan:
    jobs: list[Job]
    changed: dict[str, list[str]]  # option -> the "node_id.input (class_type)" it sets, for the user to check


def load_workflow(path: Path) -> Workflow:
    try:
        text = limits.read_capped(path, "--workflow", limits.MAX_JSON_BYTES, "give the API-format workflow file")
        data = limits.parse_json(text.decode("utf-8"), f"--workflow {path}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise QueueError(f"--workflow {path}: not JSON ({error})") from None
    except ValueError as error:
        raise QueueError(str(error)) from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise QueueError(f"--workflow {path}: this is a UI workflow; save it in API format (Export (API))")
    if not isinstance(data, dict) or not data or not all(
            isinstance(node, dict) and "class_type" in node and isinstance(node.get("inputs"), dict)
            for node in data.values()):
        raise QueueError(f"--workflow {path}: expected API format {{node_id: {{class_type, inputs}}}}")
    return data


def seed_list(seeds: Sequence[int] | None, count: int | None, seed_start: int) -> list[int]:
    """--seeds as given, or --count seeds from --seed-start; empty keeps the workflow's own seeds."""
    if seeds:
        return list(seeds)
    return list(range(seed_start, seed_start + count)) if count else []


def parse_override(text: str) -> Override:
    target, equals, raw = text.partition("=")
    node_id, dot, input_name = target.partition(".")
    if not (equals and dot and node_id and input_name):
        raise QueueError(f"--set {text}: expected NODE_ID.INPUT=VALUE, e.g. 12.steps=8")
    try:
        value = limits.parse_json(raw, f"--set {target}")
    except json.JSONDecodeError:
        value = raw  # plain text such as a prompt or a sampler name needs no JSON quotes
    except ValueError as error:
        raise QueueError(str(error)) from None
    return Override(node_id, input_name, value)


def is_link(value: object) -> bool:
    """[node_id, output_index] wires an input to another node; a literal seed must not cut that wire."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def describe(workflow: Workflow, node_id: str, input_name: str) -> str:
    return f"{node_id}.{input_name} ({workflow[node_id]['class_type']})"


def literal_inputs(workflow: Workflow, names: Sequence[str]) -> list[tuple[str, str]]:
    return [(node_id, name) for node_id, node in workflow.items() for name, value in node["inputs"].items()
            if name in names and not is_link(value)]


def apply_overrides(workflow: Workflow, overrides: Sequence[Override]) -> list[str]:
    for override in overrides:
        flag = f"--set {override.node_id}.{override.input_name}"
        node = workflow.get(override.node_id)
        if node is None:
            raise QueueError(f"{flag}: no node {override.node_id!r} in the workflow (nodes: {', '.join(workflow)})")
        if override.input_name not in node["inputs"]:
            raise QueueError(f"{flag}: node {override.node_id} ({node['class_type']}) has no input "
                             f"{override.input_name!r} (inputs: {', '.join(node['inputs'])})")
        node["inputs"][override.input_name] = override.value
    return [describe(workflow, o.node_id, o.input_name) for o in overrides]


def check_batch_size(workflow: Workflow, jobs: int) -> None:
    """Each job holds its own copy of the workflow: refuse a batch whose copies would not fit, before making any."""
    size = len(json.dumps(workflow))
    if jobs > limits.MAX_JOBS or jobs * size > limits.MAX_QUEUE_BYTES:
        raise QueueError(f"--seeds/--storyboard: {jobs:,} jobs of a {size / 1e3:,.0f} kB workflow is more than one "
                         f"queue command plans (limits {limits.MAX_JOBS:,} jobs, {limits.MAX_QUEUE_BYTES >> 20:,} MiB "
                         "of workflows); split the batch")


def plan_jobs(workflow: Workflow, seeds: Sequence[int], storyboards: Sequence[str],
              overrides: Sequence[Override]) -> JobPlan:
    """One job per (seed, storyboard) pair; --set applies to all of them. The given workflow is left unchanged."""
    check_batch_size(workflow, max(1, len(seeds)) * max(1, len(storyboards)))
    base = copy.deepcopy(workflow)
    changed = {"--set": apply_overrides(base, overrides)}
    targets: dict[str, list[tuple[str, str]]] = {}
    for flag, names, values in ((SEEDS_FLAG, SEED_INPUTS, seeds), (STORYBOARD_FLAG, STORYBOARD_INPUTS, storyboards)):
        if values:
            targets[flag] = literal_inputs(base, names)
            if not targets[flag]:
                raise QueueError(f"{flag}: the workflow has no unlinked input named {' or '.join(names)}")
            changed[flag] = [describe(base, *target) for target in targets[flag]]
    jobs = []
    for index, (seed, storyboard) in enumerate(itertools.product(seeds or [None], storyboards or [None])):
        prompt = copy.deepcopy(base)
        for flag, value in ((SEEDS_FLAG, seed), (STORYBOARD_FLAG, storyboard)):
            for node_id, name in targets.get(flag, []):
                prompt[node_id]["inputs"][name] = value
        jobs.append(Job(index, seed, storyboard, prompt))
    return JobPlan(jobs, {flag: targets for flag, targets in changed.items() if targets})


# --- websocket (RFC 6455, client side) ------------------------------------------------------------------------------

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD_BYTES = 64 << 10
MAX_MESSAGE_BYTES = 256 << 20  # large enough for preview images; a corrupt 64-bit length must not allocate terabytes
MAX_FRAMES_PER_MESSAGE = 100_000


class Opcode(IntEnum):
    CONTINUATION = 0
    TEXT = 1
    BINARY = 2
    CLOSE = 8
    PING = 9
    PONG = 10


KNOWN_OPCODES = frozenset(Opcode)


def websocket_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XOR with the repeated 4-byte mask, done as one big-integer XOR instead of a Python loop per byte."""
    repeated = (mask * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


class WebSocket:
    """Just enough of a websocket client for ComfyUI's /ws: receive text and binary messages (fragmented or not),
    answer pings, close. The socket timeout is the idle timeout: a recv that waits longer raises TimeoutError."""

    def __init__(self, sock: socket.socket, pending: bytes = b""):
        self._sock = sock
        self._buffer = bytearray(pending)  # bytes the server sent right after its handshake answer
        self._closed = False

    @classmethod
    def connect(cls, host: str, port: int, path: str, timeout: float) -> WebSocket:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as error:
            raise QueueError(f"cannot connect to {netloc(host, port)}: {error.strerror or error}") from None
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {netloc(host, port)}\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          f"Sec-WebSocket-Key: {key}\r\n\r\n").encode())
            head, pending = read_http_head(sock)
            check_handshake(head, key)
        except BaseException:
            sock.close()
            raise
        return cls(sock, pending)

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def recv(self) -> str | bytes | None:
        """The next text (str) or binary (bytes) message; None once the server has closed the connection."""
        opcode, parts, size = None, [], 0
        for _ in range(MAX_FRAMES_PER_MESSAGE):
            if self._closed:
                return None
            fin, frame_opcode, payload = self._read_frame()
            if frame_opcode == Opcode.PING:
                self._send_control(Opcode.PONG, payload)
                continue
            if frame_opcode == Opcode.PONG:  # unsolicited pongs are allowed and mean nothing
                continue
            if frame_opcode == Opcode.CLOSE:
                self.close(payload[:2])  # echo the status code, as RFC 6455 5.5.1 asks
                return None
            # A continuation needs a message in progress; a new text or binary frame needs none.
            if (frame_opcode == Opcode.CONTINUATION) == (opcode is None):
                raise QueueError(f"websocket: unexpected {Opcode(frame_opcode).name.lower()} frame")
            opcode = opcode if opcode is not None else frame_opcode
            parts.append(payload)
            size += len(payload)
            if size > MAX_MESSAGE_BYTES:
                raise QueueError(f"websocket: message longer than {MAX_MESSAGE_BYTES} bytes")
            if fin:
                message = b"".join(parts)
                return message.decode("utf-8") if opcode == Opcode.TEXT else message
        raise QueueError(f"websocket: message of more than {MAX_FRAMES_PER_MESSAGE} frames")

    def close(self, status: bytes = struct.pack("!H", 1000)) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._send_control(Opcode.CLOSE, status)
        except OSError:
            pass  # the server may already be gone; closing our end is all that is left to do
        finally:
            self._sock.close()

    def _read_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read_exact(2)
        fin, opcode, length = bool(first & 0x80), first & 0x0F, second & 0x7F
        if first & 0x70:
            raise QueueError("websocket: reserved bits set, but no extension was negotiated")
        if opcode not in KNOWN_OPCODES:
            raise QueueError(f"websocket: unknown opcode {opcode}")
        if second & 0x80:
            raise QueueError("websocket: the server sent a masked frame")
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        if opcode >= Opcode.CLOSE and (not fin or length > 125):
            raise QueueError("websocket: control frames must be single frames of at most 125 bytes")
        if length > MAX_MESSAGE_BYTES:
            raise QueueError(f"websocket: frame longer than {MAX_MESSAGE_BYTES} bytes")
        return fin, opcode, self._read_exact(length)

    def _read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:  # bounded: each pass adds at least one byte or raises
            chunk = self._sock.recv(max(65536, count - len(self._buffer)))
            if not chunk:
                raise ConnectionError("websocket: the server closed the connection in the middle of a frame")
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def _send_control(self, opcode: Opcode, payload: bytes) -> None:
        """Client frames must be masked (RFC 6455 5.3); control payloads are at most 125 bytes, so one length byte."""
        mask = os.urandom(4)
        self._sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + mask_payload(payload, mask))


def read_http_head(sock: socket.socket) -> tuple[str, bytes]:
    """The status line and headers, and whatever came after them (already websocket frames)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            raise QueueError(f"websocket handshake: answer headers longer than {MAX_HEAD_BYTES} bytes")
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("websocket handshake: the server closed the connection")
        data += chunk
    head, _, pending = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), pending


def check_handshake(head: str, key: str) -> None:
    status, *lines = head.split("\r\n")
    if status.split(" ")[1:2] != ["101"]:
        raise QueueError(f"websocket handshake: server answered {status!r} instead of 101")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    if headers.get("sec-websocket-accept") != websocket_accept(key):
        raise QueueError("websocket handshake: wrong Sec-WebSocket-Accept")


# --- ComfyUI HTTP ---------------------------------------------------------------------------------------------------

def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    def __str__(self) -> str:
        return netloc(self.host, self.port)


def parse_server(text: str) -> Server:
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (colon and host and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536 and valid_host(host)):
        raise QueueError(f"--server {text[:80]}: expected HOST:PORT, e.g. 127.0.0.1:8188")
    return Server(host, int(port))


def valid_host(host: str) -> bool:
    """A name a socket can be asked to connect to: IDNA-encodable (labels of at most 63 characters)."""
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def first_line(text: str) -> str:
    return next(iter(text.strip().splitlines()), "")


def first_node_error(node_errors: dict) -> str:
    node_id, entry = next(iter(node_errors.items()))
    error = (entry.get("errors") or [{}])[0]
    details = f" ({error['details']})" if error.get("details") else ""
    return f"node {node_id} ({entry.get('class_type', '?')}): {error.get('message', 'invalid')}{details}"


def prompt_error_message(status: int, body: bytes) -> str:
    """One line from a rejected POST /prompt: the first node error if there is one, else the prompt-level error."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return f"HTTP {status}: {first_line(body.decode('utf-8', 'replace'))[:200]}"
    if answer.get("node_errors"):
        return first_node_error(answer["node_errors"])
    error = answer.get("error") or {}
    if isinstance(error, str):  # some rejections (e.g. a prompt that is not a dict) send just a string
        return error
    details = f" ({error['details']})" if error.get("details") else ""
    return f"{error.get('message', f'HTTP {status}')}{details}"


def output_files(history_entry: dict) -> list[dict]:
    """Every {"filename", "subfolder", "type"} in a history entry's outputs; text and flags are not files."""
    return [item for node_output in history_entry.get("outputs", {}).values() for items in node_output.values()
            if isinstance(items, list) for item in items if isinstance(item, dict) and "filename" in item]


def distinct_names(refs: Sequence[dict]) -> list[str]:
    """The outputs' file names without their folders (a server's name stays inside the job folder), made distinct
    within one job: outputs of two nodes (or subfolders) both named NAME.EXT become NAME.EXT and NAME_2.EXT."""
    names: list[str] = []
    for ref in refs:
        base = Path(str(ref["filename"])).name or "output"
        candidates = (base if n == 1 else f"{Path(base).stem}_{n}{Path(base).suffix}" for n in itertools.count(1))
        names.append(next(name for name in candidates if name not in names))
    return names


class ComfyClient:
    """The HTTP side of one ComfyUI server: POST /prompt, GET /history/P, GET /view."""

    def __init__(self, server: Server, timeout: float):
        self.server = server
        self.timeout = timeout
        # No proxies: an http_proxy from the environment must not receive traffic meant for the given server.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post_prompt(self, prompt: Workflow, client_id: str) -> dict:
        """{"prompt_id", "number", "node_errors"}; a rejected prompt raises QueueError naming the first bad node."""
        try:
            with self._open("/prompt", json.dumps({"prompt": prompt, "client_id": client_id}).encode()) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                raise QueueError(prompt_error_message(error.code, error.read())) from None
        if not (isinstance(answer, dict) and isinstance(answer.get("prompt_id"), str)):
            raise QueueError(f"unexpected answer from {self.server} (POST /prompt gave no prompt_id: "
                             f"{json.dumps(answer)[:80]})")
        return answer

    def history(self, prompt_id: str) -> dict:
        with self._open(f"/history/{urllib.parse.quote(prompt_id)}") as response:
            entry = json.load(response).get(prompt_id)
        if entry is None:
            raise QueueError(f"{self.server} has no history for prompt {prompt_id}")
        return entry

    def download(self, ref: dict, target: Path) -> Path:
        query = urllib.parse.urlencode({key: ref.get(key, "") for key in ("filename", "subfolder", "type")})
        with self._open(f"/view?{query}") as response, target.open("wb") as file:
            shutil.copyfileobj(response, file)
        return target

    def _open(self, path: str, data: bytes | None = None):
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(f"http://{self.server}{path}", data=data, headers=headers)
        try:
            return self._opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError:
            raise  # an answer, not a connection problem; callers read its body
        except urllib.error.URLError as error:
            reason = getattr(error.reason, "strerror", None) or error.reason
            raise QueueError(f"cannot reach ComfyUI at {self.server}: {reason}") from None


# --- running jobs ---------------------------------------------------------------------------------------------------

Report = Callable[[str], None]


@dataclass
class JobResult:
    job: Job
    server: Server
    status: str  # "ok" or "failed"
    seconds: float
    files: list[Path] = field(default_factory=list)
    error: str = ""


def follow(ws: WebSocket, prompt: Workflow, prompt_id: str, report: Report) -> None:
    """Reads events until the prompt is done; raises QueueError if it failed. Done is the final `executing` with
    node null: ComfyUI sends it after storing the history, while execution_success comes before (main.py)."""
    for message in iter(ws.recv, None):
        if isinstance(message, bytes):
            continue  # preview images
        event = json.loads(message)
        kind, data = event.get("type"), event.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue  # queue status broadcasts, and interrupts of other clients' prompts
        node = data.get("node_id", data.get("node"))
        where = f"node {node} ({prompt.get(str(node), {}).get('class_type', data.get('node_type', '?'))})"
        if kind == "executing" and node is None:
            return
        if kind == "executing":
            report(f"executing {where}")
        elif kind == "progress":
            report(f"progress {data.get('value')}/{data.get('max')} {where}")
        elif kind == "execution_success":
            report("execution finished")
        elif kind == "execution_error":
            raise QueueError(f"{where} raised {data.get('exception_type')}: "
                             f"{first_line(data.get('exception_message', ''))}")
        elif kind == "execution_interrupted":
            raise QueueError(f"interrupted at {where}")
    raise QueueError(f"prompt {prompt_id}: the server closed the websocket before the prompt finished")


def run_job(job: Job, client: ComfyClient, out: Path, report: Report) -> list[Path]:
    client_id = str(uuid.uuid4())
    # Connect before posting, so no event of this prompt can be sent before we listen.
    with WebSocket.connect(client.server.host, client.server.port, f"/ws?clientId={client_id}", client.timeout) as ws:
        queued = client.post_prompt(job.prompt, client_id)
        if queued.get("node_errors"):
            report(f"warning: some outputs were dropped: {first_node_error(queued['node_errors'])}")
        prompt_id = queued["prompt_id"]
        report(f"queued as {prompt_id}")
        follow(ws, job.prompt, prompt_id, report)
    entry = client.history(prompt_id)
    status = entry.get("status", {}).get("status_str", "success")
    if status != "success":
        raise QueueError(f"prompt {prompt_id} ended with status {status!r}")
    folder = out / job.name
    folder.mkdir(parents=True, exist_ok=True)
    refs = output_files(entry)
    return [client.download(ref, folder / name) for ref, name in zip(refs, distinct_names(refs))]


def run_one(job: Job, client: ComfyClient, out: Path, report: Report) -> JobResult:
    """One job, its failure turned into a result so that the other jobs go on."""
    started = time.monotonic()
    try:
        files = run_job(job, client, out, report)
    except TimeoutError:
        error = f"no message from {client.server} for {client.timeout:g} s"
    except (ValueError, OSError) as failure:
        error = first_line(str(failure)) or type(failure).__name__
    except Exception as failure:  # well-formed JSON of an unexpected shape from the server: the job fails, not the worker
        error = f"unexpected answer from {client.server} ({type(failure).__name__}: {first_line(str(failure))})"
    else:
        report(f"done: {len(files)} files in {out / job.name}")
        return JobResult(job, client.server, "ok", time.monotonic() - started, files)
    report(f"failed: {error}")
    return JobResult(job, client.server, "failed", time.monotonic() - started, error=error)


def run_jobs(jobs: Sequence[Job], servers: Sequence[Server], out: Path, timeout: float,
             report: Report) -> list[JobResult]:
    """Jobs go round-robin to the servers; one thread per server runs its share one job at a time, so each server has
    at most one outstanding prompt and its progress belongs to a known job."""
    lock = threading.Lock()  # whole lines from concurrent threads
    results: dict[int, JobResult] = {}  # each thread writes only its own jobs' keys

    def job_reporter(job: Job, server: Server) -> Report:
        prefix = f"[job {job.index}{'' if job.seed is None else f' seed {job.seed}'} @ {server}] "

        def say(text: str) -> None:
            with lock:
                report(prefix + text)
        return say

    def work(server: Server, share: Sequence[Job]) -> None:
        client = ComfyClient(server, timeout)
        for job in share:
            results[job.index] = run_one(job, client, out, job_reporter(job, server))

    # Daemon threads: Ctrl-C in the main thread ends the program instead of waiting for prompts in flight.
    threads = [threading.Thread(target=work, args=(server, jobs[i::len(servers)]), name=f"queue {server}", daemon=True)
               for i, server in enumerate(servers[:len(jobs)])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[job.index] for job in jobs]


def format_summary(results: Sequence[JobResult]) -> str:
    rows = [("job", "server", "seed", "status", "seconds", "files")]
    rows += [(str(r.job.index), str(r.server), "-" if r.job.seed is None else str(r.job.seed), r.status,
              f"{r.seconds:.1f}", str(len(r.files))) for r in results]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)

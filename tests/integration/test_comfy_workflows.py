"""The pack inside a real ComfyUI server on loopback: nodes registered, the tiny workflow through /prompt,
validation errors as HTTP 400 with our message, interrupt then resume."""
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from comfy_env import comfy_path, comfy_server

from pfp_core.procedural import heldout_seed, make_video
from pfp_core.video_io import load_image

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
NODES = ["PFPLoadMemoryEncoder", "PFPTinyVAE", "PFPTinyTextEncoder", "PFPProceduralImage", "PFPStoryboardPrompt",
         "PFPCompressHistory", "PFPApplyMemory", "PFPRetrieveFrame", "PFPSaveMemory", "PFPLoadMemory", "PFPPlan",
         "PFPAutoregressiveSampler"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy_path()
    with comfy_server(tmp_path_factory.mktemp("comfy")) as running:
        yield running


def tiny_workflow(run_name: str, seconds: float = 4.0) -> dict:
    workflow = json.loads((WORKFLOWS / "pfp_tiny_cpu_api.json").read_text())
    workflow["8"]["inputs"]["run_name"] = run_name
    workflow["6"]["inputs"]["seconds"] = seconds
    workflow["9"]["inputs"]["filename_prefix"] = f"{run_name}/frame"
    return workflow


def saved_frames(entry: dict) -> list:
    return entry["outputs"]["9"]["images"]


def test_every_node_is_registered_with_its_category(server):
    info = server.get("/object_info")
    missing = [name for name in NODES if name not in info]
    assert not missing, f"not registered: {missing}; log tail: {server.log()[-2000:]}"
    assert all(info[name]["category"].startswith("PFP") for name in NODES)
    assert "pfp_tiny_encoder.safetensors" in info["PFPLoadMemoryEncoder"]["input"]["required"]["encoder_name"][1]["options"]
    assert "pfp_tiny_dit.safetensors" in info["UNETLoader"]["input"]["required"]["unet_name"][0]


def test_tiny_workflow_runs_to_the_promised_frames(server):
    status, body = server.post("/prompt", {"prompt": tiny_workflow("tiny_full")})
    assert status == 200, body
    entry = server.wait_for(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(saved_frames(entry)) == 32  # 4 s at 8 fps
    chunks = sorted((server.output / "pfp" / "tiny_full").glob("chunk_*.safetensors"))
    assert len(chunks) == 4


def test_tiny_extend_workflow_continues_a_generated_clip(server):
    workflow = json.loads((WORKFLOWS / "pfp_tiny_extend_cpu_api.json").read_text())
    status, body = server.post("/prompt", {"prompt": workflow})
    assert status == 200, body
    entry = server.wait_for(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(saved_frames(entry)) == 32  # 2 s generated, then extended to 4 s at 8 fps


def test_invalid_storyboard_is_rejected_before_running_with_the_line_named(server):
    workflow = tiny_workflow("tiny_bad")
    workflow["6"]["inputs"]["storyboard"] = "3s: later\n1s: earlier"
    status, body = server.post("/prompt", {"prompt": workflow})
    assert status == 400
    errors = body["node_errors"]["6"]["errors"]
    assert "storyboard line 2" in json.dumps(errors)


def test_bad_input_fails_in_the_node_with_our_one_line_message(server):
    workflow = tiny_workflow("../escape")
    status, body = server.post("/prompt", {"prompt": workflow})
    assert status == 200
    entry = server.wait_for(body["prompt_id"])
    messages = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert messages and messages[0][1]["exception_message"].startswith("run_name: '../escape' must be a name inside output/pfp/")


def test_interrupt_then_requeue_resumes_to_the_same_frames(server):
    status, body = server.post("/prompt", {"prompt": tiny_workflow("tiny_resume", seconds=6.0)})
    chunk_folder = server.output / "pfp" / "tiny_resume"
    deadline = time.time() + 120
    while len(list(chunk_folder.glob("chunk_*.safetensors"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    server.post("/interrupt", {})
    entry = server.wait_for(body["prompt_id"])
    kept = len(list(chunk_folder.glob("chunk_*.safetensors")))
    assert entry["status"]["status_str"] == "error" or kept < 6  # stopped before the end
    assert 2 <= kept < 6

    status, body = server.post("/prompt", {"prompt": tiny_workflow("tiny_resume", seconds=6.0)})
    resumed = server.wait_for(body["prompt_id"])
    assert resumed["status"]["status_str"] == "success"
    assert len(saved_frames(resumed)) == 48
    status, body = server.post("/prompt", {"prompt": tiny_workflow("tiny_fresh", seconds=6.0)})
    fresh = server.wait_for(body["prompt_id"])
    # PNG metadata embeds the prompt (run names differ), so compare pixels
    pixels = lambda image: load_image(server.output / image["subfolder"] / image["filename"])
    for a, b in zip(saved_frames(resumed), saved_frames(fresh)):
        assert np.array_equal(pixels(a), pixels(b))


def test_memory_nodes_compose_with_stock_nodes(server):
    """Compress -> Save; Apply Memory -> stock KSampler -> stock VAEDecode; Retrieve Frame; Plan."""
    workflow = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "pfp_tiny_dit.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 1.0}},
        "3": {"class_type": "PFPTinyVAE", "inputs": {}},
        "4": {"class_type": "PFPTinyTextEncoder", "inputs": {}},
        "5": {"class_type": "PFPLoadMemoryEncoder", "inputs": {"encoder_name": "pfp_tiny_encoder.safetensors", "dtype": "default"}},
        "6": {"class_type": "PFPProceduralImage", "inputs": {"seed": 3, "size": 32}},
        "7": {"class_type": "PFPCompressHistory", "inputs": {"memory_encoder": ["5", 0], "vae": ["3", 0], "model": ["2", 0], "images": ["6", 0], "fps": 8.0}},
        "8": {"class_type": "PFPSaveMemory", "inputs": {"memory": ["7", 0], "name": "start"}},
        "9": {"class_type": "PFPApplyMemory", "inputs": {"model": ["2", 0], "memory": ["7", 0]}},
        "10": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 0], "text": ""}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["6", 0], "vae": ["3", 0]}},
        "12": {"class_type": "KSampler", "inputs": {"model": ["9", 0], "positive": ["10", 0], "negative": ["10", 0], "latent_image": ["11", 0], "seed": 0, "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["3", 0]}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "compose/next"}},
        "15": {"class_type": "PFPRetrieveFrame", "inputs": {"model": ["2", 0], "vae": ["3", 0], "memory": ["7", 0], "positive": ["10", 0], "negative": ["10", 0], "time_seconds": 0.0, "fps": 8.0, "width": 32, "height": 32, "seed": 0, "steps": 8, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "compose/retrieved"}},
        "17": {"class_type": "PFPPlan", "inputs": {"model": "wan2.1-1.3b", "width": 832, "height": 480, "fps": 16.0, "video_seconds": 120.0, "history_seconds": 20.0, "chunk_seconds": 5.0, "rate": "4x4x2"}},
    }
    status, body = server.post("/prompt", {"prompt": workflow})
    assert status == 200, body
    entry = server.wait_for(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["14"]["images"]) == 1 and len(entry["outputs"]["16"]["images"]) == 1
    assert (server.output / "pfp_memory" / "start.safetensors").exists()
    assert "memory_tokens" in entry["outputs"]["17"]["text"][0] and "ram_estimate_gb" in entry["outputs"]["17"]["text"][0]
    # the memory holds the start frame: retrieving it beats a flat gray frame by a wide margin
    start = load_image(server.output / "compose" / entry["outputs"]["16"]["images"][0]["filename"]).astype(float)
    truth = make_video(heldout_seed(3), 1).frames[0].astype(float)
    assert np.mean((start - truth) ** 2) < 0.5 * np.mean((127.5 - truth) ** 2)


def test_encoder_that_does_not_fit_the_model_fails_with_one_clear_line(server):
    from pfp_core.checkpoint import save_model
    from pfp_core.config import encoder_config_for
    from pfp_core.encoder import MemoryEncoder

    wide = MemoryEncoder(dataclasses.replace(encoder_config_for("tiny"), dim=256))
    save_model(wide, wide.config, server.models / "pfp_encoders" / "wide.safetensors", "memory_encoder")
    workflow = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "pfp_tiny_dit.safetensors", "weight_dtype": "default"}},
        "3": {"class_type": "PFPTinyVAE", "inputs": {}},
        "5": {"class_type": "PFPLoadMemoryEncoder", "inputs": {"encoder_name": "wide.safetensors", "dtype": "default"}},
        "6": {"class_type": "PFPProceduralImage", "inputs": {"seed": 3, "size": 32}},
        "7": {"class_type": "PFPCompressHistory", "inputs": {"memory_encoder": ["5", 0], "vae": ["3", 0], "model": ["1", 0], "images": ["6", 0], "fps": 8.0}},
        "8": {"class_type": "PFPSaveMemory", "inputs": {"memory": ["7", 0], "name": "never"}},
    }
    status, body = server.post("/prompt", {"prompt": workflow})
    assert status == 200, body
    entry = server.wait_for(body["prompt_id"])
    error = next(m[1] for m in entry["status"]["messages"] if m[0] == "execution_error")
    assert error["node_type"] == "PFPCompressHistory"
    assert error["exception_message"].splitlines()[0].startswith(
        "encoder: does not fit this DiT (encoder width 256 != DiT width 128)")


def test_server_memory_stays_flat_across_queued_runs(server):
    """Ten tiny runs one after another: the server's resident memory after the last is within 5% of after the
    third (the first runs load models and warm caches)."""
    psutil = pytest.importorskip("psutil")
    process = psutil.Process(server.process.pid)
    resident = []
    for run in range(10):
        status, body = server.post("/prompt", {"prompt": tiny_workflow(f"tiny_soak_{run}", seconds=3.0)})
        assert status == 200, body
        assert server.wait_for(body["prompt_id"])["status"]["status_str"] == "success"
        resident.append(process.memory_info().rss)
    assert resident[-1] <= resident[2] * 1.05, [round(r / 2**20) for r in resident]

"""The pack inside a real ComfyUI server on loopback: nodes registered, the tiny workflows through /prompt to a
video, edit and run again, validation errors as HTTP 400 with our message on the input at fault, the memory nodes
with stock nodes. Bad inputs, interrupt and resume, and the batch soak are in test_reliability.py."""
import json

import numpy as np
import pytest
import torch

from comfy_env import API_WORKFLOWS, comfy_path, comfy_server, run_folders, saved_video, tiny_workflow

from pfp_core.bench.continuation import camera_motion
from pfp_core.training.procedural import heldout_seed, make_video
from pfp_core.generation.run_folders import KEEP_RUNS
from pfp_core.video_io import load_image

NODES = ["PFPLoadMemoryEncoder", "PFPTinyVAE", "PFPTinyTextEncoder", "PFPProceduralImage", "PFPStoryboardPrompt",
         "PFPCompressHistory", "PFPApplyMemory", "PFPRetrieveFrame", "PFPSaveMemory", "PFPLoadMemory", "PFPPlan",
         "PFPAutoregressiveSampler", "PFPVideoFrames"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy_path()
    with comfy_server(tmp_path_factory.mktemp("comfy")) as running:
        yield running


def test_every_node_is_registered_with_its_category(server):
    info = server.get("/object_info")
    missing = [name for name in NODES if name not in info]
    assert not missing, f"not registered: {missing}; log tail: {server.log()[-2000:]}"
    assert all(info[name]["category"].startswith("PFP") for name in NODES)
    assert "pfp_tiny_encoder.safetensors" in info["PFPLoadMemoryEncoder"]["input"]["required"]["encoder_name"][1]["options"]
    assert "pfp_tiny_dit.safetensors" in info["UNETLoader"]["input"]["required"]["unet_name"][0]


def run(server, workflow: dict) -> dict:
    status, body = server.post("/prompt", {"prompt": workflow})
    assert status == 200, body
    entry = server.wait_for(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def summary(entry: dict) -> str:
    return entry["outputs"]["8"]["text"][0]


def test_tiny_workflow_saves_a_video_with_the_promised_frames(server):
    entry = run(server, tiny_workflow("tiny_full"))
    assert saved_video(server, entry).shape == (32, 32, 32, 3)  # 4 s at 8 fps
    (folder,) = run_folders(server, "tiny_full")
    assert len(list(folder.glob("chunk_*.safetensors"))) == 4
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in folder.iterdir())
    assert summary(entry).startswith(f"new run tiny_full/{folder.name}: 4 chunks (0 resumed, 4 generated)")


def test_the_tiny_pair_pans_the_way_its_storyboard_says_through_comfyuis_sampler(server):
    """The sampler node passes the pair's camera speed, so the storyboard's pans reach the model through ComfyUI's
    own sampler: the saved video moves right for the pan's second and back for the return's, by phase correlation
    of its frames (a pan is 4 px a frame at 32 px)."""
    workflow = tiny_workflow("camera", seconds=3.0)
    workflow["6"]["inputs"]["storyboard"] = "0s: camera holds\n1s: camera pans right\n2s: camera comes back"
    frames = saved_video(server, run(server, workflow))
    assert abs(camera_motion(frames[:8])) < 1
    assert camera_motion(frames[7:16]) > 2 and camera_motion(frames[15:24]) < -2


def test_edit_and_run_again_starts_a_new_run_and_the_same_settings_resume(server):
    first = tiny_workflow("edits", seconds=3.0)
    assert "new run" in summary(run(server, first))
    edits = [("8", "seed", 1), ("6", "storyboard", "0s: another world"), ("8", "steps", 4)]
    for node, name, value in edits:
        edited = json.loads(json.dumps(first))
        edited[node]["inputs"][name] = value
        text = summary(run(server, edited))
        assert "new run" in text, (name, value)
        # the pair was finetuned for 1 step a chunk: the node says so when steps differ, and only then
        assert ("warning: steps 4: this encoder was finetuned" in text) == (name == "steps"), text
    assert len(run_folders(server, "edits")) == 1 + len(edits)
    resumed = run(server, first)
    assert summary(resumed).startswith("resumed edits/") and "(3 resumed, 0 generated)" in summary(resumed)
    for seed in range(2, 2 + KEEP_RUNS):  # retention: only the most recently used runs stay on disk
        seeded = json.loads(json.dumps(first))
        seeded["8"]["inputs"]["seed"] = seed
        run(server, seeded)
    assert len(run_folders(server, "edits")) == KEEP_RUNS


def test_a_finished_run_continues_for_more_seconds_and_keeps_chunks_before_an_edited_prompt(server):
    short = tiny_workflow("continued", seconds=3.0)
    run(server, short)
    (first,) = run_folders(server, "continued")
    longer = run(server, tiny_workflow("continued", seconds=5.0))
    assert f"continuing {first.name}: 5 chunks (3 resumed, 2 generated)" in summary(longer), summary(longer)
    edited = tiny_workflow("continued", seconds=3.0)
    edited["6"]["inputs"]["storyboard"] = "0s: a textured world with moving objects\n2s: a storm rolls in"
    assert "(2 resumed, 1 generated)" in summary(run(server, edited))  # chunks 0-1 had the same prompts
    newest = max(run_folders(server, "continued"), key=lambda p: p.stat().st_mtime)
    assert same_frames(newest / "chunk_0001.safetensors", first / "chunk_0001.safetensors")  # taken, not regenerated


def test_keep_chunks_regenerates_from_chunk_k_with_another_seed(server):
    run(server, tiny_workflow("regen", seconds=3.0))
    (first,) = run_folders(server, "regen")
    reseeded = tiny_workflow("regen", seconds=3.0)
    reseeded["8"]["inputs"].update(seed=9, keep_chunks=2)
    text = summary(run(server, reseeded))
    assert f"continuing {first.name}: 3 chunks (2 resumed, 1 generated)" in text, text
    (second,) = [p for p in run_folders(server, "regen") if p != first]
    assert same_frames(second / "chunk_0001.safetensors", first / "chunk_0001.safetensors")
    assert (second / "chunk_0002.safetensors").read_bytes() != (first / "chunk_0002.safetensors").read_bytes()
    run(server, tiny_workflow("regen_other", seconds=3.0))  # ComfyUI's cache now holds another prompt
    assert "(3 resumed, 0 generated)" in summary(run(server, reseeded))  # the same keep_chunks run resumes


def test_tiny_extend_workflow_continues_a_generated_clip(server):
    workflow = json.loads((API_WORKFLOWS / "pfp_tiny_extend_cpu_api.json").read_text())
    entry = run(server, workflow)
    assert len(saved_video(server, entry)) == 32  # 2 s generated, then extended to 4 s at 8 fps


def test_video_frames_gives_a_frame_range_of_a_run(server):
    workflow = tiny_workflow("frames")
    workflow["10"] = {"class_type": "PFPVideoFrames", "inputs": {"video": ["8", 0], "start_seconds": 1.0, "seconds": 2.0}}
    workflow["11"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "frames/frame"}}
    entry = run(server, workflow)
    assert len(entry["outputs"]["11"]["images"]) == 16  # 2 s at 8 fps


def refusal(server, node: str, name: str, value) -> dict:
    """The one /prompt error (HTTP 400) of the tiny workflow with node.name set to value; it must be on that input."""
    workflow = tiny_workflow("tiny_refused")
    workflow[node]["inputs"][name] = value
    status, body = server.post("/prompt", {"prompt": workflow})
    assert status == 400, body
    (error,) = body["node_errors"][node]["errors"]
    assert error["extra_info"]["input_name"] == name, error
    return error


def test_invalid_storyboard_is_one_error_on_the_storyboard_input_with_the_line_named(server):
    assert "storyboard line 2" in refusal(server, "6", "storyboard", "3s: later\n1s: earlier")["details"]


def test_a_missing_encoder_file_is_refused_at_prompt_naming_file_and_folder(server):
    details = refusal(server, "5", "encoder_name", "missing.safetensors")["details"]
    assert "'missing.safetensors'" in details and str(server.models / "pfp_encoders") in details


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


def same_frames(a, b) -> bool:
    """Two chunk files hold the same frames (a shared chunk is re-stamped with its new run's digest)."""
    from safetensors.torch import load_file

    return torch.equal(load_file(str(a))["frames"], load_file(str(b))["frames"])

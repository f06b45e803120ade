"""Reliability bench: every case of both bad-input catalogs (command line, ComfyUI /prompt), 20 SIGINTs and 20
SIGKILLs of `python -m pfp_core generate` and 20 ComfyUI /interrupts at random moments, each followed by a
resume that must give the frames of an uninterrupted run, and a 50-prompt batch soak. Writes
docs/results/reliability.md and reliability.json.

    COMFYUI_PATH=/path/to/ComfyUI OMP_NUM_THREADS=1 nice -n 10 /path/to/comfyui-venv/bin/python \\
        tests/integration/reliability_bench.py

Without COMFYUI_PATH only the command-line parts run, and the report says so. The tests run the same functions
with small counts (tests/test_bad_inputs.py, tests/test_interruptions.py, tests/integration/test_reliability.py).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

import pytest

from bad_inputs import ACCEPTED, CASES, check_outcome, run_process, snapshot
from interruptions import Interruption, cli_interruptions

from pfp_core.atomic import write_bytes


def cli_catalog(tmp: Path) -> list[dict]:
    rows = []
    for number, case in enumerate(CASES + ACCEPTED):
        folder = tmp / f"cli_case_{number}"
        folder.mkdir()
        rows.append({"case": case.name, "entry": "CLI", "expects": expects(case),
                     **outcome(functools.partial(run_cli_case, case, folder))})
        print(f"CLI {rows[-1]['status']:8} {case.name}", flush=True)
    return rows


def run_cli_case(case, folder: Path) -> str:
    with contextlib.ExitStack() as stack:
        argv = case.setup(folder, stack)
        before = snapshot(folder)
        code, stderr = run_process(argv, case.file_size_limit)
        return check_outcome(case, folder, before, code, stderr)


def expects(case) -> str:
    return "an error" if case.field else "to work"


def outcome(run) -> dict:
    """A case's row: 'as promised' with its message, 'FAILED' with what went wrong, or 'skipped' with why."""
    try:
        return {"status": "as promised", "message": run()}
    except AssertionError as error:
        return {"status": "FAILED", "message": str(error).splitlines()[0] if str(error) else "assertion failed"}
    except pytest.skip.Exception as skipped:
        return {"status": "skipped", "message": str(skipped)}


def comfy_parts(tmp: Path, interruptions: int, prompts: int, seed: int) -> tuple[list[dict], list[Interruption], dict]:
    from comfy_env import comfy_server
    from comfy_reliability import ACCEPTED as COMFY_ACCEPTED
    from comfy_reliability import CASES as COMFY_CASES
    from comfy_reliability import batch_soak, comfy_interruptions, run_case

    (tmp / "comfy").mkdir()
    with comfy_server(tmp / "comfy") as server:
        rows = []
        for case in COMFY_CASES + COMFY_ACCEPTED:
            rows.append({"case": case.name, "entry": "ComfyUI /prompt", "expects": expects(case),
                         **outcome(functools.partial(run_case, server, case))})
            print(f"ComfyUI {rows[-1]['status']:8} {case.name}", flush=True)
        stops = comfy_interruptions(server, interruptions, seed)
        print(f"ComfyUI /interrupt: {sum(r.survived for r in stops)} of {len(stops)} survived", flush=True)
        soak = batch_soak(server, prompts)
        print(f"soak: {soak['succeeded']} of {prompts}, RSS drift {soak['rss_drift_pct']}%", flush=True)
    return rows, stops, soak


# ------------------------------------------------------------------------------------------------- the report

def interruption_line(how: str, results: list[Interruption]) -> str:
    stopped = [r for r in results if r.stopped]
    late = len(results) - len(stopped)
    kept = Counter(r.chunks_kept for r in stopped)
    spread = ", ".join(f"{k} chunk{'s' if k != 1 else ''} kept: {n}" for k, n in sorted(kept.items()))
    extra = f"; {late} more arrived after the run had finished (also resumed fine: " \
            f"{sum(r.survived for r in results if not r.stopped)} of {late})" if late else ""
    return (f"| {how} | {sum(r.survived for r in stopped)} of {len(stopped)} survived ({spread}){extra} |")


def figures_table(data: dict) -> list[str]:
    lines = ["| what | figure |", "| --- | --- |"]
    for entry in ("CLI", "ComfyUI /prompt"):
        rows = [r for r in data["catalog"] if r["entry"] == entry]
        if rows:
            count = Counter(r["status"] for r in rows)
            errors = sum(r["expects"] == "an error" for r in rows)
            lines.append(f"| bad inputs through {entry} | {len(rows)} cases ({errors} errors, "
                         f"{len(rows) - errors} valid edge inputs): {count['as promised']} as promised, "
                         f"{count['FAILED']} failed, {count['skipped']} skipped |")
    for how in ("SIGINT", "SIGKILL", "/interrupt"):
        results = [Interruption(**{k: v for k, v in r.items() if k != "survived"})
                   for r in data["interruptions"] if r["how"] == how]
        if results:
            lines.append(interruption_line(f"`{how}` then resume" if how != "/interrupt" else
                                           "ComfyUI `/interrupt` then re-queue", results))
    soak = data.get("soak")
    if soak:
        lines.append(f"| batch soak | {soak['succeeded']} of {soak['prompts']} prompts succeeded; server RSS "
                     f"{soak['rss_after_warmup_mb']} MB after the {soak['warmup']}th, {soak['rss_after_last_mb']} MB "
                     f"after the last: drift {soak['rss_drift_pct']:+.2f}% (limit 5%); files in ComfyUI's temp "
                     f"folder {soak['leftover_after_warmup']['temp']} -> {soak['leftover_after_last']['temp']}, "
                     f"temporaries under output {soak['leftover_after_warmup']['tmp_in_output']} -> "
                     f"{soak['leftover_after_last']['tmp_in_output']}; every run folder holds "
                     f"{'/'.join(map(str, soak['files_per_run_folder']))} files (manifest + chunks); RSS after each "
                     f"run between {min(soak['rss_trace_mb'])} and {max(soak['rss_trace_mb'])} MB |")
    return lines


def catalog_table(rows: list[dict]) -> list[str]:
    lines = ["| case | entry point | what the user sees |", "| --- | --- | --- |"]
    for row in rows:
        message = row["message"].replace("|", "\\|").replace("\n", " ")
        status = "" if row["status"] == "as promised" else f"**{row['status']}**: "
        lines.append(f"| {row['case']} | {row['entry']} | {status}`{message}` |")
    return lines


def report(data: dict) -> str:
    comfy = "" if data["comfyui"] else ("\n**ComfyUI was not available for this run (COMFYUI_PATH unset): only the "
                                        "command-line parts ran.**\n")
    return "\n".join([
        "# Reliability: bad inputs, interruptions, batch soak",
        "",
        (f"Measured {data['date']} on {data['machine']} by `tests/integration/reliability_bench.py` "
         f"({data['seconds']:.0f} s). Every figure below comes from that run; `reliability.json` holds the raw rows."),
        comfy,
        "## Figures",
        "",
        *figures_table(data),
        "",
        "What each line checks:",
        "",
        ("- **Bad inputs**: every error case exits non-zero (CLI) or fails at /prompt validation (HTTP 400) or in the "
         "node, with one line that names the field and says what to do; no traceback; every file that existed "
         "before is byte-identical afterwards and no temporary file is left; a pickle's payload never runs; the "
         "ComfyUI server is still running and answers /system_stats after each case. Valid edge inputs (tiny or "
         "odd images, a chunk longer than the video, ...) must simply work."),
        ("- **Interruptions**: the signal (or `POST /interrupt` with the prompt id) lands at a random moment between "
         "the run's manifest appearing (model loaded, chunk folder open) and the time an uninterrupted run took "
         "from there to write its last chunk, so it can hit any chunk or chunk write (and, in a run faster than the "
         "reference, the final video write). Then the same "
         "command (or the same workflow) runs again. Survived means: SIGINT exits 130 with one line and no "
         "traceback, the resume finishes and resumes exactly the chunks that were on disk, every chunk's uint8 "
         "frames and the decoded video (CLI) or the saved PNG frames (ComfyUI) are byte-equal to an uninterrupted "
         "run with the same seed, and nothing but the manifest and the chunks is left in the chunk folder. A "
         "signal that arrives after the run already finished is drawn again and counted separately."),
        ("- **Batch soak**: the tiny workflow (`workflows/pfp_tiny_cpu_api.json`, 3 s, 3 chunks) queued through "
         "/prompt on loopback: the first runs are queued and finished (warm-up: models load, caches fill), then "
         "the rest are queued at once. Resident memory is the server process's VmRSS."),
        "",
        "Limits of these figures:",
        "",
        ("- A full disk is simulated: the command line runs under `RLIMIT_FSIZE` (writes fail with EFBIG, as on a "
         "full disk they fail with ENOSPC; both reach the same handler), ComfyUI writes into a real 360 kB tmpfs "
         "(ENOSPC). A read-only folder is a read-only tmpfs when running as root (root ignores file modes), "
         "`chmod 555` otherwise; without the right to mount, those cases are skipped and counted as such."),
        ("- Power loss is not tested: chunks are flushed (fsync) before the rename, the folder entry is not."),
        ("- Everything runs the tiny model on CPU; the Wan VAE and DiT paths share this code but were not run."),
        ("- Out-of-range widgets that ComfyUI checks itself (cfg 31, steps 0) keep ComfyUI's wording, which names "
         "the input."),
        ("- Model files must be real files inside a `pfp_encoders` folder: a symlink that leads out of it is "
         "refused like `../`; add the other folder to `extra_model_paths.yaml` instead."),
        "",
        "## Commands",
        "",
        "```bash",
        "COMFYUI_PATH=/path/to/ComfyUI OMP_NUM_THREADS=1 nice -n 10 /path/to/comfyui-venv/bin/python \\",
        (f"    tests/integration/reliability_bench.py --interruptions {data['interruptions_per_kind']} "
         f"--prompts {data['prompts']} --out docs/results"),
        "python -m pytest -q tests/test_bad_inputs.py tests/test_interruptions.py          # CI: the CLI catalog, 2+2 stops",
        "COMFYUI_PATH=/path/to/ComfyUI /path/to/comfyui-venv/bin/python -m pytest -q tests/integration/test_reliability.py",
        "```",
        "",
        "## Bad-input catalog",
        "",
        *catalog_table(data["catalog"]),
        "",
    ])


TMP_PLACEHOLDER = "/path/to/tmp"  # the report names no folder of the machine it ran on
REPO_PLACEHOLDER = "/path/to/pfp"  # e.g. the bundled encoder's absolute path in the encoder_name case


def without_run_folder(rows: list[dict], tmp: str) -> list[dict]:
    """Catalog rows with the run's temporary folder in their messages replaced by TMP_PLACEHOLDER, and this
    repository's folder by REPO_PLACEHOLDER."""
    def placeholders(message: str) -> str:
        return message.replace(tmp, TMP_PLACEHOLDER).replace(str(HERE.parents[1]), REPO_PLACEHOLDER)

    return [{**row, "message": placeholders(row["message"])} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interruptions", type=int, default=20, help="per kind: SIGINT, SIGKILL, /interrupt")
    parser.add_argument("--prompts", type=int, default=50, help="batch soak length")
    parser.add_argument("--seed", type=int, default=0, help="for the random interruption moments")
    parser.add_argument("--out", default=str(HERE.parents[1] / "docs" / "results"))
    args = parser.parse_args()
    started = time.time()
    comfyui = bool(os.environ.get("COMFYUI_PATH"))
    with tempfile.TemporaryDirectory(prefix="pfp_reliability_") as tmp:
        catalog = cli_catalog(Path(tmp))
        stops = cli_interruptions(Path(tmp), [signal.SIGINT, signal.SIGKILL], args.interruptions, args.seed)
        print(f"CLI stops: {sum(r.survived for r in stops)} of {len(stops)} survived", flush=True)
        soak = None
        if comfyui:
            comfy_rows, comfy_stops, soak = comfy_parts(Path(tmp), args.interruptions, args.prompts, args.seed)
            catalog, stops = catalog + comfy_rows, stops + comfy_stops
        catalog = without_run_folder(catalog, tmp)
    data = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
            "seconds": time.time() - started, "comfyui": comfyui, "interruptions_per_kind": args.interruptions,
            "prompts": args.prompts, "catalog": catalog, "interruptions": [r.row() for r in stops], "soak": soak}
    out = Path(args.out)
    write_bytes(out / "reliability.json", json.dumps(data, indent=1).encode())
    write_bytes(out / "reliability.md", report(data).encode())
    print(f"reliability: report in {out / 'reliability.md'}")


if __name__ == "__main__":
    main()

"""Ctrl-C and kill -9 at random moments of `python -m pfp_core generate`, then the same command again: the
resumed video equals an uninterrupted run byte for byte (tests/interruptions.py; the bench runs 20 of each)."""
import signal

from interruptions import cli_interruptions


def test_a_stopped_generate_resumes_to_the_frames_of_an_uninterrupted_run(tmp_path):
    results = cli_interruptions(tmp_path, [signal.SIGINT, signal.SIGKILL], count=2, seed=1)
    for sig in ("SIGINT", "SIGKILL"):
        assert sum(r.stopped for r in results if r.how == sig) == 2, [r.row() for r in results]
    assert all(result.survived for result in results), [result.row() for result in results]

import torch

from pfp_core.bench.evaluation import RetrievalSettings, evaluate_retrieval


def test_retrieval_report_scores_every_frame_against_baselines(random_engine):
    settings = RetrievalSettings(videos=2, history_frames=8, targets=3, steps=2)
    result, examples = evaluate_retrieval(random_engine.dit, random_engine.encoder, settings, random_engine.dit,
                                          example_videos=1)
    assert result["frames"] == 6
    assert set(result["baselines"]) == {"gray", "mean_frame", "no_memory", "no_memory_one_step"}
    # the mean frame of a video is closer to its frames than a flat gray frame
    assert result["baselines"]["mean_frame"]["psnr"] > result["baselines"]["gray"]["psnr"]
    assert examples.shape == (3 * 32, 5 * 32, 3) and examples.dtype == torch.uint8
    # first column is the ground truth; the mean-frame column is the same image in every row of a video
    assert torch.equal(examples[:32, 96:128], examples[32:64, 96:128])

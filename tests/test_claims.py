"""The claims benchmark pipeline end to end, at a smoke budget (the real budget is `make claims`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_claims_pipeline_trains_evaluates_and_reports(tmp_path):
    out = tmp_path / "claims"
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    cmd = [sys.executable, "bench/claims.py", "all", "--out", str(out), "--results", str(page),
           "--image-steps", "2", "--video-steps", "2", "--max-samples", "2", "--sample-steps", "2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "claims.json").read_text())
    assert set(summary["rows"]) == {"full", "no_tracks", "no_link", "first_clip_ref"}
    assert {v["holds"] for v in summary["claims"]} <= {"yes", "no", "not significant"}
    for model in ("full", "no_tracks"):
        for stage in ("image", "video"):
            assert summary["training"][model][stage]["steps"] == 2
    text = page.read_text()
    assert "| first_clip_ref |" in text and "## The claims" in text
    assert (page.parent / "images" / "claims_sheet.png").stat().st_size > 0
    assert (page.parent / "images" / "claims_drift.png").stat().st_size > 0
    # The pose-only model trains no track encoder and has no motion-hint input.
    cfg = (out / "image" / "runs" / "no_tracks" / ".hydra" / "config.yaml").read_text()
    assert "use_tracks: false" in cfg


@pytest.mark.slow
def test_claims_latent_config_trains_twelve_models_and_reports_twenty_seven_rows(tmp_path):
    """`--config latent`: the tiny latent model (bundled VAE), the link-augmentation and hint-space variants, link
    variants, the pixel baseline, the demo recipe on the 16-channel VAE and on the AutoencoderDC (with its pose-only
    twin), eight rows that generate with the hints anchored (one ending on the hints' pixels; three the paper's
    ablations of the demo model) and four rows that generate nothing (the first frame held, the three VAEs' round
    trips)."""
    out = tmp_path / "claims_latent"
    page = tmp_path / "docs" / "results_latent.md"
    page.parent.mkdir()
    cmd = [sys.executable, "bench/claims.py", "all", "--config", "latent", "--out", str(out), "--results", str(page),
           "--image-steps", "2", "--video-steps", "2", "--max-samples", "2", "--sample-steps", "2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "claims.json").read_text())
    rows = {"full", "no_tracks", "no_link", "first_clip_ref", "no_link_aug", "pixel_hints", "noise_init", "link_noise",
            "pixel_32", "still_reference", "vae_reconstruction", "pixel_no_aug", "pixel_no_aug_pw5",
            "pixel_no_aug_pw5_image", "pixel_no_aug_pw10_image", "pixel_no_aug_no_tracks",
            "pixel_no_aug_pw5_image_anchor", "pixel_32_anchor", "c16_pw5_image", "c16_pw5_image_anchor",
            "vae_reconstruction_c16", "c16_pw5_image_anchor_pixel", "dc16_pw5_image_anchor",
            "vae_reconstruction_dc", "dc16_no_tracks_anchor", "dc16_pw5_image_anchor_no_link",
            "dc16_pw5_image_anchor_first_clip_ref"}  # fmt: skip
    assert set(summary["rows"]) == rows  # pixel_32: the shipped 32x32 pixel model on the same videos
    for row in ("pixel_no_aug_pw5_image_anchor", "pixel_32_anchor", "c16_pw5_image_anchor", "dc16_pw5_image_anchor",
                "c16_pw5_image_anchor_pixel", "dc16_no_tracks_anchor", "dc16_pw5_image_anchor_no_link",
                "dc16_pw5_image_anchor_first_clip_ref"):  # fmt: skip
        anchored = json.loads((out / "eval" / row / "metrics.json").read_text())  # what was used
        assert anchored["settings"]["sampling"]["hint_anchor"] == 1.0
        finish = "pixel" if row.endswith("_pixel") else "blend"
        assert anchored["settings"]["sampling"]["anchor_finish"] == finish
    plain = json.loads((out / "eval" / "pixel_32" / "metrics.json").read_text())
    assert plain["settings"]["sampling"]["hint_anchor"] == 0.0, "a bundle that recommends nothing: off"
    # still_reference generates nothing: its frames are the first frame repeated, scored like the others
    still = json.loads((out / "eval" / "still_reference" / "metrics.json").read_text())
    assert still["samples"] == 2 and still["rescored"] and still["mean"]["seam_score"] == 1.0
    assert {v["metric"] for v in summary["claims"] if v["claim"].startswith("link augmentation")} == {
        "colour_error_background_last",
        "colour_error_seen_background_last",
        "seam_score",
    }
    # the VAE's round trip: the true frames through the shipped VAE, far closer to the truth than any 2-step model
    vae = json.loads((out / "eval" / "vae_reconstruction" / "metrics.json").read_text())
    assert vae["samples"] == 2 and vae["rescored"] and vae["mean"]["psnr"] > 20
    vae16 = json.loads((out / "eval" / "vae_reconstruction_c16" / "metrics.json").read_text())
    assert vae16["samples"] == 2 and vae16["mean"]["psnr"] > vae["mean"]["psnr"]  # 16 channels keep more
    dc = json.loads((out / "eval" / "vae_reconstruction_dc" / "metrics.json").read_text())
    assert dc["samples"] == 2 and dc["mean"]["psnr"] > vae16["mean"]["psnr"]  # the AutoencoderDC keeps more still
    assert set(summary["training"]) == {"full", "no_tracks", "no_link_aug", "pixel_hints", "pixel_no_aug",
                                        "pixel_no_aug_pw5", "pixel_no_aug_pw5_image", "pixel_no_aug_pw10_image",
                                        "pixel_no_aug_no_tracks", "c16_pw5_image", "dc16_pw5_image",
                                        "dc16_pw5_image_no_tracks"}  # fmt: skip
    assert {v["claim"] for v in summary["claims"] if "demo model" in v["claim"]} == {
        "tracks move the background (demo model)",
        "linking removes seams (demo model)",
        "reference at every clip stops drift (demo model)",
        "the demo model beats the 32x32 pixel model",
    }
    ablated = json.loads((out / "eval" / "dc16_pw5_image_anchor_first_clip_ref" / "metrics.json").read_text())
    assert ablated["settings"]["reference_every_clip"] is False
    c16 = (out / "video" / "runs" / "c16_pw5_image" / ".hydra" / "config.yaml").read_text()
    assert "tiny_vae_c16" in c16 and "in_channels: 16" in c16
    dc16 = (out / "video" / "runs" / "dc16_pw5_image" / ".hydra" / "config.yaml").read_text()
    assert "tiny_vae_dc" in dc16 and "in_channels: 16" in dc16
    pose_only = (out / "video" / "runs" / "dc16_pw5_image_no_tracks" / ".hydra" / "config.yaml").read_text()
    assert "tiny_vae_dc" in pose_only and "use_tracks: false" in pose_only
    # `image:` overrides reach stage image only: stage video keeps the experiment's person weight (1x)
    image = (out / "image" / "runs" / "pixel_no_aug_pw10_image" / ".hydra" / "config.yaml").read_text()
    video = (out / "video" / "runs" / "pixel_no_aug_pw10_image" / ".hydra" / "config.yaml").read_text()
    assert "person_loss_weight: 10.0" in image and "person_loss_weight: 1.0" in video and "hint_space: pixel" in video
    pw5 = (out / "image" / "runs" / "pixel_no_aug_pw5" / ".hydra" / "config.yaml").read_text()
    assert "person_loss_weight: 5.0" in pw5 and "hint_space: pixel" in pw5 and "link_augment: null" in pw5
    hints = (out / "image" / "runs" / "pixel_hints" / ".hydra" / "config.yaml").read_text()
    assert "hint_space: pixel" in hints
    cfg = (out / "image" / "runs" / "no_link_aug" / ".hydra" / "config.yaml").read_text()
    assert "link_augment: null" in cfg and "fgbg.models.latent.VAELatent" in cfg
    full = (out / "video" / "runs" / "full" / ".hydra" / "config.yaml").read_text()
    assert "max_t: 0.3" in full and "denoiser.unet.conv_in" in full
    text = page.read_text()
    assert "| noise_init |" in text and "128 frames" in text and "| pixel_32 |" in text
    assert "appearance err person" in text and "64x64 latent beats the 32x32 pixel model" in text
    assert "colour err bg seen by ref" in text and "| still_reference |" in text
    assert (page.parent / "images" / "claims_latent_sheet.png").stat().st_size > 0


def test_stage_scoped_overrides_reach_one_stage(monkeypatch):
    """A model's `image:`/`video:` overrides go to that stage's command only; others to both."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import claims

    monkeypatch.setitem(claims.MODELS, "m", ["model.hint_space=pixel", "image:model.person_loss_weight=5.0",
                                             "video:model.optimizer.lr=1.0e-4"])  # fmt: skip
    image, video = claims.train_command("m", "image"), claims.train_command("m", "video")
    assert "model.person_loss_weight=5.0" in image and not any("person_loss_weight" in a for a in video)
    assert "model.optimizer.lr=1.0e-4" in video and "model.optimizer.lr=1.0e-4" not in image
    assert "model.hint_space=pixel" in image and "model.hint_space=pixel" in video
    assert not any(a.startswith(("image:", "video:")) for a in image + video)
    # the stage budget's own max_time (a value with colons) is left alone
    assert f"trainer.max_time={claims.BUDGET['image']['max_time']}" in image


def test_overrides_command_prints_one_stage_of_a_models_overrides():
    """`claims.py overrides` (what bench/gpu_tiny_latent.sh trains with): one override per line, the stage's own."""

    def run(*args):
        cmd = [sys.executable, "bench/claims.py", "overrides", "--config", "latent", *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)

    image = run("--models", "pixel_no_aug_pw10_image", "--stage", "image")
    video = run("--models", "pixel_no_aug_pw10_image", "--stage", "video")
    assert image.returncode == 0 and video.returncode == 0, image.stderr + video.stderr
    base = ["model.hint_space=pixel", "model.link_augment=null", "model.video_trainable=[]"]
    assert image.stdout.splitlines() == [*base, "model.person_loss_weight=10.0"]
    assert video.stdout.splitlines() == base
    assert run("--models", "full").stdout == ""  # no overrides: no line (an empty argument would reach Hydra)
    bad = run("--models", "bogus")
    assert bad.returncode == 2 and "invalid choice: 'bogus'" in bad.stderr


def test_claims_command_judges_the_claims_between_the_given_rows(tmp_path):
    """`claims --rows A B ... --json F`: only the claims whose two rows are both given, judged paired by video
    without the benchmark's other rows; a set of rows no claim compares is refused, naming the rows."""
    out = tmp_path / "claims_latent"
    seam = {"dc16_pw5_image_anchor": [1.0, 0.9, 1.0], "dc16_pw5_image_anchor_no_link": [1.5, 1.6, 1.4]}
    for row, values in seam.items():
        per_sample = [{"key": f"v{i}", "seam_score": v} for i, v in enumerate(values)]
        (out / "eval" / row).mkdir(parents=True)
        (out / "eval" / row / "metrics.json").write_text(json.dumps({"mean": {"seam_score": sum(values) / 3},
                                                                     "per_sample": per_sample}))  # fmt: skip
    cmd = [sys.executable, "bench/claims.py", "claims", "--config", "latent", "--out", str(out), "--json",
           str(tmp_path / "c.json"), "--rows", *seam]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        "| linking removes seams (demo model) | seam_score |" in proc.stdout and "0.533 +- 0.088 | yes |" in proc.stdout
    )
    (verdict,) = json.loads((tmp_path / "c.json").read_text())["claims"]  # no other claim has both rows here
    assert verdict["holds"] == "yes" and verdict["samples"] == 3 and abs(verdict["gain"] - 1.6 / 3) < 1e-9
    proc = subprocess.run(cmd[:-1], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no claim compares two of ['dc16_pw5_image_anchor']" in proc.stderr


def test_compare_pairs_rows_by_video(tmp_path):
    """`compare --rows A B`: A's gain over B on every column, paired by video, for rows evaluated without the
    whole benchmark; a missing row names its metrics.json."""
    out = tmp_path / "claims_latent"
    psnr = {"a": [20.0, 21.0, 23.0], "b": [19.0, 19.0, 20.0]}  # gains 1, 2, 3: mean 2, SE 1/sqrt(3)
    seam = {"a": [1.2, 1.2, 1.2], "b": [1.0, 1.0, 1.0]}  # a is worse by 0.2 on every video (lower is better)
    for row in ("a", "b"):
        per_sample = [{"key": f"v{i}", "psnr": psnr[row][i], "seam_score": seam[row][i]} for i in range(3)]
        mean = {"psnr": sum(psnr[row]) / 3, "seam_score": sum(seam[row]) / 3}
        (out / "eval" / row).mkdir(parents=True)
        (out / "eval" / row / "metrics.json").write_text(json.dumps({"mean": mean, "per_sample": per_sample}))
    cmd = [sys.executable, "bench/claims.py", "compare", "--config", "latent", "--out", str(out), "--rows", "a", "b"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {line.split(" | ")[0].strip("| "): line for line in proc.stdout.splitlines() if line.startswith("|")}
    assert "| 21.33 | 19.33 | +2.000 ± 0.577 **better** |" in lines["PSNR"]
    assert "| 1.20 | 1.00 | -0.200 ± 0.000 **worse** |" in lines["seam"]
    assert "track err px" not in lines  # columns neither row has are left out
    proc = subprocess.run(cmd[:-1] + ["missing"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "eval/missing/metrics.json missing" in proc.stderr
    # --sheet: rows kept as metrics only (no saved frames) are left out, with a note; none left is an error
    proc = subprocess.run(cmd + ["--sheet", str(tmp_path / "sheet.png")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "row a has no saved frames" in proc.stdout
    assert "no row has saved frames of v0" in proc.stderr and not (tmp_path / "sheet.png").exists()

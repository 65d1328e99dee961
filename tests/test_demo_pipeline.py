"""The demo pipeline in miniature (scripts/train_demo.sh on 20 fake silhouettes, tiny tokenizers): every
stage's output, the token rows against an independent encoding, and resume after an interruption."""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vqvae
from data_utils import UnifiedTokenizer, layouts
from data_utils.datasets import LMDBDataset
from preprocess.sources import read_captions
from tests.helpers.demo_source import write_fake_animal_mnist

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_demo.sh"
MINIATURE = {
    "DEMO_PER_ANIMAL": "2",
    "DEMO_TRAIN_COPIES": "1",
    "DEMO_IMAGE_SIZE": "32",
    "DEMO_VQ_STRIDE": "4",  # 32 px → 8×8 codes ([TINY])
    "DEMO_VQ_CHANNEL": "16",
    "DEMO_VQ_EMBED_DIM": "8",
    "DEMO_VQ_CODES": "32",
    "DEMO_VQ_BATCH": "8",
    "DEMO_VQ_STEPS": "6",
    "DEMO_VQ_SAVE_INTERVAL": "2",
    "DEMO_CLASSIFIER_EPOCHS": "1",
    "DEMO_GPT_LAYERS": "1",
    "DEMO_GPT_HIDDEN": "16",
    "DEMO_GPT_HEADS": "2",
    "DEMO_GPT_BATCH": "4",
    "DEMO_GPT_ITERS": "3",
    "DEMO_GPT_SAVE_INTERVAL": "2",
    "DEMO_GPT_EVAL_INTERVAL": "2",
    "DEMO_GPT_EVAL_ITERS": "1",
    "DEMO_CAPTION_COPIES": "1",
    "DEMO_CAPTION_ITERS": "3",
    "DEMO_CAPTION_SAVE_INTERVAL": "2",
    "DEMO_CAPTION_EVAL_INTERVAL": "2",
    "DEMO_CAPTION_EVAL_ITERS": "1",
    "DEMO_SR_TRAIN_EVERY": "1",
    "DEMO_SR_TEST_EVERY": "2",
    "DEMO_SR_BATCH": "4",
    "DEMO_SR_ITERS": "3",
    "DEMO_SR_SAVE_INTERVAL": "2",
    "DEMO_SR_EVAL_INTERVAL": "2",
    "DEMO_SR_EVAL_ITERS": "1",
}
BUNDLED = ("demo_text.model", "vqvae_demo.pt", "animal_classifier.pt")
LMDBS = [f"demo_{split}_{short}.lmdb" for split in ("train", "test") for short in ("t2i", "i2t")]
LMDBS.append("demo_caption_train_i2t.lmdb")  # the caption GPT's fresh composites

pytestmark = pytest.mark.slow


def miniature_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEMO_")}
    source = tmp_path / "source"
    if not source.exists():
        write_fake_animal_mnist(source, per_class=20)
    env.update(MINIATURE, DEMO_SOURCE=str(source), OMP_NUM_THREADS="1", **extra)
    env.update(DEMO_WORK=str(tmp_path / "work"), DEMO_BUNDLE=str(tmp_path / "bundle"))
    return env


def run_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One uninterrupted miniature run."""
    root = tmp_path_factory.mktemp("demo_run")
    result = run_script(miniature_env(root))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_every_stage_leaves_its_output(finished):
    work = finished / "work"
    for split, images in (("train", 20), ("test", 20)):
        assert len(read_captions(work / split / "captions.tsv")) == 2 * images
    for name in BUNDLED:
        assert (finished / "bundle" / name).read_bytes() == (work / "tokenizers" / name).read_bytes()
    for name in LMDBS:
        assert len(LMDBDataset(work / "lmdb" / name, process_fn=np.asarray)) == 40
    fresh = read_captions(work / "caption" / "train" / "captions.tsv")
    assert [r.caption for r in fresh] != [r.caption for r in read_captions(work / "train" / "captions.tsv")]


def assert_bundled_is_last_checkpoint(run: Path, model: Path, iteration: str) -> None:
    """The bundled model folder holds the weights of the run's last checkpoint, in fp16, and nothing else."""
    assert (run / "latest_checkpointed_iteration.txt").read_text() == iteration
    trained = torch.load(run / iteration / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert (model / "latest_checkpointed_iteration.txt").read_text() == iteration
    bundled = torch.load(model / iteration / "mp_rank_00_model_states.pt", weights_only=True)
    assert "optimizer" not in bundled and "torch_rng_state" not in bundled
    assert bundled["module"].keys() == trained.keys()
    for key, weight in bundled["module"].items():
        torch.testing.assert_close(weight, trained[key].half(), rtol=0, atol=0)


def test_token_rows_match_an_independent_encoding(finished):
    work = finished / "work"
    model = vqvae.load_vqvae(work / "tokenizers" / "vqvae_demo.pt")
    tokenizer = UnifiedTokenizer(None, "cpu", 32, txt_tokenizer_path=work / "tokenizers" / "demo_text.model")
    records = read_captions(work / "test" / "captions.tsv")
    t2i = LMDBDataset(work / "lmdb" / "demo_test_t2i.lmdb", process_fn=np.asarray)
    i2t = LMDBDataset(work / "lmdb" / "demo_test_i2t.lmdb", process_fn=np.asarray)
    for index in (0, 1, 17):
        record = records[index]
        codes = vqvae.img2code(model, vqvae.read_img(work / "test" / record.image, 32))[0].tolist()
        text = tokenizer.EncodeAsIds(record.caption)
        assert len(codes) == 64 and len(text) in (6, 7)
        roi, size, boi, eoi = (tokenizer[name] for name in ("[ROI1]", "[TINY]", "[BOI1]", "[EOI1]"))
        assert t2i[index].tolist() == [roi, *text, size, boi, *codes, eoi]
        assert i2t[index].tolist() == [size, boi, *codes, eoi, roi, *text, tokenizer.caption_end_id]


def test_the_bundled_gpt_is_the_last_checkpoint_of_its_training(finished):
    run = next((finished / "work" / "gpt").glob("demo_gpt*"))
    assert_bundled_is_last_checkpoint(run, finished / "bundle" / "cogview-demo", "3")
    manifest = (finished / "bundle" / "models.args").read_text()
    assert (
        "common: --num-layers 1 --hidden-size 16 --num-attention-heads 2 --max-position-embeddings 88"
        in manifest
    )
    assert "caption: --load cogview-demo" in manifest
    assert (
        "text2image: --load cogview-demo --post-select-load cogview-demo "
        "--top_k 30 --guidance-scale 2 --post-select 16 --max-inference-batch-size 128" in manifest
    )


def test_the_bundled_caption_gpt_is_the_gpt_finetuned_with_the_caption_role(finished):
    gpt = next((finished / "work" / "gpt").glob("demo_gpt*"))
    run = finished / "work" / "caption" / "gpt" / gpt.name  # a finetune is saved under its model's name
    assert_bundled_is_last_checkpoint(run, finished / "bundle" / "cogview-demo-caption", "3")
    assert torch.load(run / "3" / "mp_rank_00_model_states.pt", weights_only=False)["iteration"] == 3
    lines = (finished / "bundle" / "models.args").read_text().splitlines()
    caption_part = lines[lines.index("caption: --load cogview-demo") + 2 :]
    assert caption_part[:2] == [
        "caption: --load cogview-demo-caption",
        "text2image: --post-select-load cogview-demo cogview-demo-caption",  # scores with both GPTs
    ]


def test_super_resolution_rows_match_an_independent_encoding(finished):
    work = finished / "work"
    model = vqvae.load_vqvae(work / "tokenizers" / "vqvae_demo.pt")
    tokenizer = UnifiedTokenizer(None, "cpu", 32, txt_tokenizer_path=work / "tokenizers" / "demo_text.model")
    train = LMDBDataset(work / "lmdb" / "demo_train_sr.lmdb", process_fn=np.asarray)
    test = LMDBDataset(work / "lmdb" / "demo_test_sr.lmdb", process_fn=np.asarray)
    assert (len(train), len(test)) == (40 * 9, 20 * 9)  # every composite, every second one; 9 windows each
    records = read_captions(work / "test" / "captions.tsv")
    for index in (0, 3):  # the test rows: composites 0, 2, 4, ...: records 0, 1, 4, 5, ...
        record = records[2 * (index // 2) * 2 + index % 2]
        low, high = (
            vqvae.img2code(model, vqvae.read_img(work / "test" / record.image, size))[0].tolist()
            for size in (32, 64)
        )
        assert (len(low), len(high)) == (64, 256)
        expected = layouts.super_resolution_rows(tokenizer, tokenizer.EncodeAsIds(record.caption), low, high)
        assert [test[9 * index + window].tolist() for window in range(9)] == expected


def test_the_bundled_super_resolution_gpt_is_the_gpt_finetuned_with_its_own_role(finished):
    gpt = next((finished / "work" / "gpt").glob("demo_gpt*"))
    run = finished / "work" / "sr" / "gpt" / gpt.name  # a finetune is saved under its model's name
    assert_bundled_is_last_checkpoint(run, finished / "bundle" / "cogview-demo-sr", "3")
    assert torch.load(run / "3" / "mp_rank_00_model_states.pt", weights_only=False)["iteration"] == 3
    lines = (finished / "bundle" / "models.args").read_text().splitlines()
    assert lines[-1] == (
        "super-resolution: --num-layers 1 --hidden-size 16 --num-attention-heads 2 "
        "--max-position-embeddings 88 --max-position-embeddings-finetune 104 --load cogview-demo-sr"
    )
    assert "caption: --load cogview-demo" in lines


def test_rerun_does_nothing_and_other_settings_are_refused(finished):
    work = finished / "work"
    stamps = {name: (work / "lmdb" / name).stat().st_mtime_ns for name in LMDBS}
    result = run_script(miniature_env(finished))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {name: (work / "lmdb" / name).stat().st_mtime_ns for name in LMDBS} == stamps
    result = run_script(miniature_env(finished, DEMO_VQ_CODES="64"))
    assert result.returncode == 2
    assert "was built with other DEMO_* settings" in result.stderr


def test_an_interrupted_run_resumes_to_the_same_models(finished, tmp_path):
    env = miniature_env(tmp_path)
    process = subprocess.Popen(
        ["bash", str(SCRIPT)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "work" / "tokenizers" / "vqvae_demo.pt.train-state"
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the whole pipeline, mid VQ-VAE training (or just after)
    process.wait()
    result = run_script(env)
    assert result.returncode == 0, result.stderr[-3000:]
    ours = torch.load(tmp_path / "bundle" / "vqvae_demo.pt", weights_only=True)
    reference = torch.load(finished / "bundle" / "vqvae_demo.pt", weights_only=True)
    assert ours.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], rtol=0, atol=0)
    for name in LMDBS:
        assert len(LMDBDataset(tmp_path / "work" / "lmdb" / name, process_fn=np.asarray)) == 40

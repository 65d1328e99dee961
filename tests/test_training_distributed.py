"""Training runs in real gloo processes, each compared with a reference computed another way.

* a DeepSpeed step (ZeRO 0 and 2) equals a hand-computed AdamW step; a NaN loss skips the step;
  a crash mid-save leaves the previous checkpoint in force;
* 2-process ZeRO-2 data parallelism equals 1 process accumulating the same global batch (ZeRO-1);
* resuming on another data-parallel size and ZeRO stage (2 → 1 and 1 → 2 processes) continues with the
  same optimizer state: the losses and weights after it equal the uninterrupted run's;
* model-parallel size 2 trains like size 1 from the same weights (the vocabulary padding differs);
* what ZeRO-1 and ZeRO-2 runs save loads in generate_samples.py and tools/reshard_checkpoint.py.

Dropout is 0 where processes are compared (their RNG streams differ by design). Runs are batched per
process launch: a launch costs more than a tiny run.
"""

import contextlib
import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

import generate_samples
import mpu
from arguments import get_args
from data_utils import unified_tokenizer
from model.checkpoint import read_shard, read_tracker, reshard_checkpoint, save_checkpoint
from tests.helpers.distributed import run_distributed
from tests.helpers.training import logged, run_folder, train_argv, write_dataset, write_ds_config
from tools.make_tiny_cogview import tiny_gpt

NO_DROPOUT = ("--hidden-dropout", "0", "--attention-dropout", "0")
MP_IMAGE_TOKENS = 173  # 50200 tokens: 50304 rows at model-parallel size 1, 50432 at size 2


@pytest.fixture(autouse=True)
def _own_tokenizer_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unified_tokenizer, "_TOKENIZER", None)


def _run(rank, world_size, runs):
    """Each run: `pretrain(get_args(argv))`; the model-parallel groups are rebuilt between runs."""
    from training.run import pretrain

    for argv in runs:
        assert pretrain(get_args(argv)) == 0
        mpu.destroy_model_parallel()


def _set_up(argv):
    """What `pretrain` does before training, returning the engine and one training batch."""
    from data_utils import make_loaders
    from generation.runtime import build_tokenizer
    from training.distributed import initialize_distributed, set_random_seed
    from training.engine import set_vocab_sizes, setup_model_and_optimizer

    args = get_args(argv)
    initialize_distributed(args, torch.device("cpu"))
    set_random_seed(args.seed, torch.device("cpu"))
    tokenizer = build_tokenizer(args, torch.device("cpu"))
    set_vocab_sizes(args, tokenizer)
    train_loader, _, _ = make_loaders(args, tokenizer)
    model, optimizer, scheduler = setup_model_and_optimizer(args)
    return args, model, optimizer, scheduler, next(iter(train_loader))


def _step_checks(rank, world_size, data, config_dir, save_dir):
    """Per ZeRO stage: the first step against AdamW by hand, the NaN skip, and a crash mid-save."""
    from training.checkpointing import TrainingProgress
    from training.checkpointing import save_checkpoint as save_training
    from training.engine import unwrap
    from training.step import forward_step, train_step

    results = {}
    for stage in (0, 2):
        config = write_ds_config(config_dir / f"zero{stage}.json", gradient_clipping=0.0,
                                 zero_optimization={"stage": stage})  # fmt: skip
        argv = train_argv(data, *NO_DROPOUT, "--lr-decay-style", "constant", "--warmup", "0",
                          "--deepspeed", "--deepspeed_config", str(config))  # fmt: skip
        args, model, optimizer, scheduler, batch = _set_up(argv)
        reference = copy.deepcopy(unwrap(model))
        loss, *_ = forward_step(iter([batch]), reference, args, None, [])
        loss.backward()
        _, skipped, _, _, _ = train_step(iter([batch]), model, optimizer, scheduler, args, None, [])
        decayed = {id(p) for p in pretrain_groups(reference)[0]["params"]}
        worst = 0.0
        for (name, after), before in zip(
            unwrap(model).named_parameters(), reference.parameters(), strict=True
        ):
            wd = 0.01 if id(before) in decayed else 0.0
            grad = before.grad
            expected = before.detach() * (1 - 1e-3 * wd) - 1e-3 * grad / (grad.abs() + 1e-8)
            worst = max(worst, float((after.detach() - expected).abs().max()))
            assert after.shape == expected.shape, name
        results[f"adamw_error_zero{stage}"] = worst
        results[f"skipped_zero{stage}"] = skipped
        adamw = optimizer.optimizer if stage else optimizer  # ZeRO wraps torch's AdamW
        results[f"engine_zero{stage}"] = (model.enable_backward_allreduce, adamw.param_groups[0]["fused"])

        # A NaN forward: no backward, no step, the schedule stays; the next iteration trains again.
        weights = {n: p.detach().clone() for n, p in unwrap(model).named_parameters()}
        norm = unwrap(model).transformer.final_layernorm.weight
        saved_norm = norm.detach().clone()
        with torch.no_grad():
            norm.fill_(float("nan"))
        steps_before = scheduler.num_iters
        _, nan_skipped, _, _, _ = train_step(iter([batch]), model, optimizer, scheduler, args, None, [])
        with torch.no_grad():
            norm.copy_(saved_norm)
        unchanged = all(torch.equal(p.detach(), weights[n]) for n, p in unwrap(model).named_parameters())
        results[f"nan_zero{stage}"] = (nan_skipped, unchanged, scheduler.num_iters == steps_before)
        _, next_skipped, _, _, _ = train_step(iter([batch]), model, optimizer, scheduler, args, None, [])
        results[f"after_nan_zero{stage}"] = (next_skipped, scheduler.num_iters == steps_before + 1)

        # A crash while DeepSpeed writes iteration 3 leaves iteration 2 in force.
        args.save = str(save_dir / f"zero{stage}")
        progress = TrainingProgress(iteration=2)
        save_training(2, model, optimizer, scheduler, args, progress)
        real_save = model.save_checkpoint

        def crashing_save(save_dir, tag, **kwargs):
            Path(save_dir, tag).mkdir(parents=True, exist_ok=True)
            Path(save_dir, tag, "mp_rank_00_model_states.pt").write_bytes(b"half a file")
            raise OSError("disk full")

        model.save_checkpoint = crashing_save
        with contextlib.suppress(OSError):
            save_training(3, model, optimizer, scheduler, args, progress)
        model.save_checkpoint = real_save
        results[f"after_crash_zero{stage}"] = (read_tracker(args.save), (Path(args.save) / "3").exists())
        save_training(3, model, optimizer, scheduler, args, progress)
        results[f"resaved_zero{stage}"] = (
            read_tracker(args.save),
            sorted(p.name for p in Path(args.save).iterdir()),
        )
        mpu.destroy_model_parallel()
    return results


def pretrain_groups(model):
    from training.engine import get_param_groups

    return get_param_groups(model)


def test_deepspeed_steps_nan_skip_and_crash_mid_save(tmp_path):
    data = write_dataset(tmp_path / "data.lmdb", count=8)
    (results,) = run_distributed(_step_checks, 1, data, tmp_path, tmp_path / "save")
    for stage in (0, 2):
        assert results[f"skipped_zero{stage}"] == 0
        assert results[f"adamw_error_zero{stage}"] < 1e-6, results
        # one process: no all-reduce without ZeRO (the identity), which ZeRO needs; torch's fused AdamW
        assert results[f"engine_zero{stage}"] == (stage != 0, True)
        assert results[f"nan_zero{stage}"] == (1, True, True)
        assert results[f"after_nan_zero{stage}"] == (0, True)
        assert results[f"after_crash_zero{stage}"] == ("2", False)
        tracker, names = results[f"resaved_zero{stage}"]
        assert tracker == "3" and names == ["2", "3", "latest_checkpointed_iteration.txt"] + (
            ["zero_to_fp32.py", "zero_to_torch.py"] if stage else []
        )


def _copy_checkpoint(run: Path, iteration: int, destination: Path) -> Path:
    """`run`'s iteration folder alone, with a tracker naming it (a run stopped right after that save)."""
    destination.mkdir(parents=True)
    shutil.copytree(run / str(iteration), destination / str(iteration))
    (destination / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return destination


def _weights(run: Path, iteration: int) -> dict[str, torch.Tensor]:
    return read_shard(run / str(iteration) / "mp_rank_00_model_states.pt")["module"]


def _assert_close_runs(log: Path, reference: Path, iterations, rtol=1e-5):
    got, expected = logged(log), logged(reference)
    for iteration in iterations:
        assert got[iteration] == pytest.approx(expected[iteration], rel=rtol), iteration


def _assert_close_weights(run: Path, reference: Path, iteration: int, atol=2e-5):
    got, expected = _weights(run, iteration), _weights(reference, iteration)
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], atol=atol, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_data_parallel_zero_resume_on_other_sizes_model_parallel_and_generation(
    tmp_path, tiny_cogview, capsys
):
    data = write_dataset(tmp_path / "data.lmdb")
    zero2_dp2 = write_ds_config(
        tmp_path / "z2.json", train_micro_batch_size_per_gpu=1, zero_optimization={"stage": 2}
    )
    zero1_acc2 = write_ds_config(tmp_path / "z1.json", train_micro_batch_size_per_gpu=1,
                                 gradient_accumulation_steps=2, zero_optimization={"stage": 1})  # fmt: skip
    zero0 = write_ds_config(tmp_path / "z0.json")

    def run(name, config, *extra, source=data, image_tokens=None):
        kwargs = {} if image_tokens is None else {"num_image_tokens": image_tokens}
        return train_argv(source, *NO_DROPOUT, "--train-iters", "4", "--save-interval", "2", "--save",
                          str(tmp_path / name), "--log-file", str(tmp_path / f"{name}.jsonl"), "--deepspeed",
                          "--deepspeed_config", str(config), *extra, **kwargs)  # fmt: skip

    # Model parallelism: both sizes start from the same MP=1 weights (the padding rows differ).
    mp_data = write_dataset(tmp_path / "mp.lmdb", num_image_tokens=MP_IMAGE_TOKENS)
    torch.manual_seed(0)
    init = tiny_gpt(MP_IMAGE_TOKENS + 50027)
    save_checkpoint(init, tmp_path / "init", 1)
    mp_common = ("--load", str(tmp_path / "init"), "--finetune")
    mp_data_args = {"source": mp_data, "image_tokens": MP_IMAGE_TOKENS}

    run_distributed(_run, 1, [
        run("B", zero1_acc2),
        run("mp1", zero0, *mp_common, **mp_data_args),
    ])  # fmt: skip
    b_run = run_folder(tmp_path / "B")
    b_at_2 = _copy_checkpoint(b_run, 2, tmp_path / "B-at-2" / b_run.name)
    run_distributed(_run, 2, [
        run("A", zero2_dp2),
        run("C", zero2_dp2, "--load", str(b_at_2)),
        run("mp2", zero0, *mp_common, "--model-parallel-size", "2", **mp_data_args),
    ])  # fmt: skip
    a_run = run_folder(tmp_path / "A")
    a_at_2 = _copy_checkpoint(a_run, 2, tmp_path / "A-at-2" / a_run.name)
    run_distributed(_run, 1, [run("B2", zero1_acc2, "--load", str(a_at_2))])

    # 2 processes (ZeRO-2) equal 1 process accumulating the same 2-sample global batch (ZeRO-1).
    _assert_close_runs(tmp_path / "A.jsonl", tmp_path / "B.jsonl", range(1, 5))
    _assert_close_weights(a_run, b_run, 4)
    # 2 → 1 process (ZeRO-2 → ZeRO-1) and 1 → 2: the resumed steps equal the uninterrupted ones, so the
    # Adam moments came across (fresh ones would move the weights by about lr per step).
    assert sorted(logged(tmp_path / "B2.jsonl")) == [3, 4] == sorted(logged(tmp_path / "C.jsonl"))
    _assert_close_runs(tmp_path / "B2.jsonl", tmp_path / "A.jsonl", [3, 4])
    _assert_close_weights(run_folder(tmp_path / "B2"), a_run, 4)
    _assert_close_runs(tmp_path / "C.jsonl", tmp_path / "B.jsonl", [3, 4])
    _assert_close_weights(run_folder(tmp_path / "C"), b_run, 4)
    # Model-parallel size 2 trains like size 1.
    _assert_close_runs(tmp_path / "mp2.jsonl", tmp_path / "mp1.jsonl", range(1, 5))
    assert sorted(p.name for p in (run_folder(tmp_path / "mp2") / "4").iterdir()) == [
        "mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt",
    ]  # fmt: skip

    # ZeRO-2 (2 processes) and ZeRO-1 checkpoints load for generation and resharding as they are.
    for folder in (a_run, b_run):
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("一只猫\n", encoding="utf-8")
        out = tmp_path / f"samples-{folder.parent.name}"
        argv = ["--load", str(folder), "--img-tokenizer-path", str(tiny_cogview["vqvae"]),
                *tiny_cogview["args"], "--device", "cpu", "--batch-size", "1",
                "--input-source", str(prompts), "--output-path", str(out)]  # fmt: skip
        assert generate_samples.main(argv) == 0, capsys.readouterr().err
        assert (out / "一只猫" / "0.jpg").is_file()
        reshard_checkpoint(
            folder, tmp_path / f"mp2-{folder.parent.name}", 2, num_tokens=50091, log=lambda _: None
        )
    assert json.loads((tmp_path / "A.jsonl").read_text().splitlines()[0])["iteration"] == 1


@pytest.mark.slow
def test_checkpointing_sparse_bf16_and_the_released_command_line(tmp_path):
    data = write_dataset(tmp_path / "data.lmdb")
    zero0 = write_ds_config(tmp_path / "z0.json")

    def run(name, *extra, config=zero0):
        return train_argv(data, *NO_DROPOUT, "--train-iters", "2", "--eval-iters", "2",
                          "--save", str(tmp_path / name),
                          "--log-file", str(tmp_path / f"{name}.jsonl"),
                          "--deepspeed", "--deepspeed_config", str(config), *extra)  # fmt: skip

    released = ("--experiment-name", "cogview-bird_animal_tutorial-12-1024-16", "--split", "949,50,1",
                "--distributed-backend", "nccl", "--lr-decay-style", "cosine", "--warmup", ".1",
                "--checkpoint-activations", "--deepspeed-activation-checkpointing",
                "--max-memory-length", "0", "--fp16", "--txt-loss-scale", "5",
                "--resume-dataloader")  # fmt: skip
    sparse = ("--is-sparse", "1", "--query-window", "19", "--key-window-times", "2", "--num-pivot", "16")
    run_distributed(_run, 1, [
        run("dense"),
        run("bf16", "--bf16"),
        run("checkpointed", "--checkpoint-activations"),
        run("deepspeed-checkpointed", "--checkpoint-activations", "--deepspeed-activation-checkpointing"),
        run("sparse", "--checkpoint-activations", *sparse),
        run("released", *released, config=Path("scripts/ds_config.json")),
    ])  # fmt: skip
    dense = logged(tmp_path / "dense.jsonl")
    for name in ("checkpointed", "deepspeed-checkpointed"):
        assert logged(tmp_path / f"{name}.jsonl") == pytest.approx(dense, rel=1e-6), name
    assert logged(tmp_path / "bf16.jsonl") == pytest.approx(dense, rel=2e-2)
    assert all(0 < loss < 20 for loss in logged(tmp_path / "sparse.jsonl").values())
    assert sorted(logged(tmp_path / "released.jsonl")) == [1, 2]
    released_run = run_folder(tmp_path / "released")
    assert released_run.name.startswith("cogview-bird_animal_tutorial-12-1024-16")
    assert (released_run / "latest_checkpointed_iteration.txt").read_text() == "2"

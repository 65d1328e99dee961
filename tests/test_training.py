"""Training pieces against independent references: positions, the loss split, parameter groups, the LR
schedule wiring, DeepSpeed config checks, and one clear line for each kind of bad input."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import pretrain_gpt2
from arguments import get_args
from data_utils import unified_tokenizer
from model import GPT2Model
from tests.helpers.training import IMAGE_TOKENS, logged, train_argv, write_dataset, write_ds_config
from training import ds_config
from training.batch import BatchError, check_token_range, finetune_position_ids
from training.distributed import LAUNCHER_VARIABLES
from training.loss import lm_loss
from training.run import main


@pytest.fixture(autouse=True)
def _own_tokenizer_singleton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training installs its tokenizer process-wide; give the previous one back after each test."""
    monkeypatch.setattr(unified_tokenizer, "_TOKENIZER", None)


def test_module_functions_keep_the_original_signatures():
    import inspect

    expected = {
        "get_model": ["args"],
        "setup_model_and_optimizer": ["args"],
        "get_learning_rate_scheduler": ["optimizer", "args"],
        "get_masks_and_position_ids": ["data", "loss_mask", "attention_mask", "args"],
        "get_batch": ["data_iterator", "args", "timers"],
        "forward_step": ["data_iterator", "model", "args", "timers", "mems"],
        "train_step": ["data_iterator", "model", "optimizer", "lr_scheduler", "args", "timers", "mems"],
        "evaluate": ["data_iterator", "model", "args", "timers", "verbose"],
    }
    for name, parameters in expected.items():
        assert list(inspect.signature(getattr(pretrain_gpt2, name)).parameters) == parameters, name


def test_masks_and_positions_as_the_original():
    data = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    attention_mask, loss_mask, positions = pretrain_gpt2.get_masks_and_position_ids(data)
    assert attention_mask.shape == (1, 1, 4, 4)
    assert torch.equal(
        attention_mask[0, 0], torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1] * 4])
    )
    assert torch.equal(loss_mask, torch.ones(2, 4, dtype=torch.long))
    assert torch.equal(positions, torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))


@pytest.mark.parametrize("flag", ["--finetune", "--finetune-positions"])  # the added flag: same positions
def test_finetune_positions_restart_at_roi2_and_are_clamped(real_tokenizer, monkeypatch, flag):
    monkeypatch.setattr(unified_tokenizer, "_TOKENIZER", real_tokenizer)
    roi2 = real_tokenizer["[ROI2]"]
    data = torch.tensor([[1, 2, 3, 4, 5, roi2, 7, 8], [roi2, 1, roi2, 3, 4, 5, 6, 7]])
    args = get_args([flag, "--max-position-embeddings", "5", "--max-position-embeddings-finetune", "9"])
    _, _, positions = pretrain_gpt2.get_masks_and_position_ids(data, args=args)
    assert positions.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 4, 4, 4]]
    with pytest.raises(BatchError, match=r"\[ROI2\] \(id 58200\) in every sample; batch row 1 has none"):
        finetune_position_ids(torch.tensor([[roi2, 1], [1, 2]]), roi2, 5)


def test_loss_splits_by_input_token_and_scales_text():
    torch.manual_seed(0)
    num_image, vocab = 4, 10
    tokens = torch.tensor([[8, 1, 2, 9, 5, 0]])  # text, img, img, text, text, img
    labels = torch.tensor([[1, 2, 9, 5, 0, 3]])
    loss_mask = torch.tensor([[1.0, 1, 1, 1, 0, 1]])  # position 4 is padding
    logits = torch.randn(1, 6, vocab)
    parts = lm_loss(logits, labels, tokens, loss_mask, txt_loss_scale=5.0, num_image_tokens=num_image)
    per_token = F.cross_entropy(logits[0], labels[0], reduction="none")
    weights = torch.tensor([5.0, 1, 1, 5, 0, 1])
    torch.testing.assert_close(parts.loss, (per_token * weights).sum() / weights.sum())
    torch.testing.assert_close(parts.img_loss, per_token[[1, 2, 5]].mean())
    torch.testing.assert_close(parts.txt_loss, per_token[[0, 3]].mean())  # unscaled


def test_model_parallel_padding_rows_are_left_out_of_the_loss():
    logits, labels = torch.randn(2, 3, 16), torch.randint(0, 11, (2, 3))
    ones = torch.ones(2, 3)
    # 11 tokens in multiples of 4: 12 rows at MP=1 (kept, as the original), 16 at MP=2 (4 left out)
    parts = lm_loss(logits, labels, labels, ones, txt_loss_scale=1.0, num_image_tokens=0, num_tokens=11,
                    vocab_multiple=4)  # fmt: skip
    expected = F.cross_entropy(logits[..., :12].reshape(-1, 12), labels.reshape(-1))
    torch.testing.assert_close(parts.loss, expected)


def test_token_ids_outside_the_vocabulary_are_one_clear_error():
    check_token_range(torch.tensor([[0, 9]]), 10)
    with pytest.raises(BatchError, match=r"token id 12, outside the vocabulary \[0, 10\)"):
        check_token_range(torch.tensor([[0, 12]]), 10)


def test_param_groups_exclude_layernorms_and_biases_from_weight_decay():
    model = GPT2Model(2, 128, 16, 2, 0.0, 0.0, 0.0, 8, 0, False)
    decay, no_decay = pretrain_gpt2.get_param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in decay["params"]} == {
        n for n, _ in model.named_parameters() if n.endswith("weight") and "layernorm" not in n
    }
    assert "word_embeddings.weight" in {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_learning_rate_scheduler_follows_the_arguments():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.0)
    args = get_args(["--lr", "0.1", "--train-iters", "100", "--warmup", "0.1", "--lr-decay-style", "cosine"])
    scheduler = pretrain_gpt2.get_learning_rate_scheduler(optimizer, args)
    for _ in range(5):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 5 / 10)
    for _ in range(45):
        scheduler.step()
    expected = 0.1 / 10 * ((math.cos(math.pi * 40 / 100) + 1) * 9 / 2 + 1)  # progress over the total
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_released_deepspeed_configs_adapt_to_the_cpu(capsys):
    for name, micro, zero in (("ds_config.json", 12, None), ("ds_config_zero.json", 4, 1)):
        args = get_args(["--deepspeed", "--deepspeed_config", f"scripts/{name}", "--device", "cpu"])
        config = ds_config.adapt_config(
            ds_config.read_config(args.deepspeed_config), args, torch.device("cpu"), 1
        )
        assert (
            capsys.readouterr().out
            == f"scripts/{name}: fp16 is not supported on a CPU; training in fp32 instead\n"
        )
        assert "fp16" not in config and not args.fp16
        assert config["train_micro_batch_size_per_gpu"] == micro == args.batch_size
        assert config["optimizer"]["params"]["torch_adam"] is True
        assert config["optimizer"]["params"]["fused"] is True
        assert config.get("zero_optimization", {}).get("stage") == zero
    args = get_args(["--deepspeed", "--deepspeed_config", "scripts/ds_config.json", "--bf16"])
    config = ds_config.adapt_config(
        ds_config.read_config(args.deepspeed_config), args, torch.device("cpu"), 1
    )
    assert config["bf16"] == {"enabled": True} and args.bf16 and "fp16" not in config


def test_only_torch_adamw_is_made_fused():
    """DeepSpeed's own Adam (`torch_adam` false) takes no `fused` argument; a file's own choice stands."""
    args = get_args(["--device", "cpu"])
    for params, fused in (({"torch_adam": False}, None), ({"fused": False}, False), ({}, True)):
        config = {"optimizer": {"type": "AdamW", "params": dict(params)}}
        adapted = ds_config.adapt_config(config, args, torch.device("cpu"), 1)["optimizer"]["params"]
        assert adapted.get("fused") is fused, params


def test_deepspeed_batch_sizes_must_agree(tmp_path, capsys):
    config = write_ds_config(tmp_path / "ds.json", train_batch_size=6)
    with pytest.raises(SystemExit):
        get_args(["--deepspeed", "--deepspeed_config", str(config), "--batch-size", "3"])
    assert (
        f"error: --batch-size 3 contradicts train_micro_batch_size_per_gpu 2 in DeepSpeed config {config}"
        in capsys.readouterr().err
    )
    args = get_args(["--deepspeed", "--deepspeed_config", str(config)])
    with pytest.raises(ds_config.DeepSpeedConfigError, match="train_batch_size 6 is not micro-batch 2 x"):
        ds_config.adapt_config(json.loads(config.read_text()), args, torch.device("cpu"), 2)


# --- bad input: one line each, nothing saved lost ---------------------------------------------------


def _error_line(capsys) -> str:
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err_lines) == 1, err_lines
    return err_lines[0]


def test_bad_input_is_one_line_and_keeps_what_was_saved(tmp_path, capsys):
    data = write_dataset(tmp_path / "data.lmdb", count=8)
    config = write_ds_config(tmp_path / "ds.json")
    ds = ["--deepspeed", "--deepspeed_config", str(config)]

    launcher = {key: os.environ.get(key) for key in LAUNCHER_VARIABLES}
    assert main(train_argv(tmp_path / "missing.lmdb", "--train-iters", "1")) == 2
    assert {key: os.environ.get(key) for key in LAUNCHER_VARIABLES} == launcher  # nothing left behind
    assert _error_line(capsys) == f"error: LMDB dataset {tmp_path / 'missing.lmdb'} does not exist."

    corrupt = tmp_path / "corrupt.lmdb"
    corrupt.mkdir()
    (corrupt / "data.mdb").write_bytes(b"not an lmdb file" * 100)
    assert main(train_argv(corrupt, "--train-iters", "1")) == 2
    assert "corrupt.lmdb" in _error_line(capsys)

    small_vocab = train_argv(data, "--train-iters", "1", *ds, num_image_tokens=IMAGE_TOKENS)
    small_vocab[small_vocab.index("--img-tokenizer-num-tokens") + 1] = "16"  # codes up to 63 are now text
    # ids of the data are < 50091, the vocabulary now holds 50043: the largest text id is outside it
    assert main(small_vocab) == 2
    assert "outside the vocabulary [0, 50043)" in _error_line(capsys)

    save = tmp_path / "save"
    assert main(train_argv(data, "--train-iters", "2", "--save", str(save), *ds)) == 0
    (run,) = list(save.iterdir())
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    wider = train_argv(data, "--train-iters", "4", "--load", str(run), "--save", str(save), *ds)
    wider[wider.index("--hidden-size=32")] = "--hidden-size=64"
    assert main(wider) == 2
    assert _error_line(capsys) == (
        f"error: {run}/2/mp_rank_00_model_states.pt: the checkpoint has hidden size 32, the model 64: "
        "pass --hidden-size 32"
    )
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    blocked = tmp_path / "file"
    blocked.write_text("a file where --save wants a folder")
    assert main(train_argv(data, "--train-iters", "1", "--save", str(blocked))) == 2
    assert f"cannot write checkpoints to --save {blocked}/run" in _error_line(capsys)
    assert blocked.read_text() == "a file where --save wants a folder"


def test_plain_torch_run_with_exit_interval_new_datasets_and_tensorboard(tmp_path, capsys):
    data = write_dataset(tmp_path / "data.lmdb", count=8)
    incoming = tmp_path / "incoming"
    write_dataset(incoming / "more.lmdb", count=8, seed=1)
    (incoming / "unfinished.lmdb.partial").mkdir()
    log = tmp_path / "log.jsonl"
    argv = train_argv(data, "--train-iters", "5", "--exit-interval", "2", "--new-dataset-path", str(incoming),
                      "--summary-dir", str(tmp_path / "tb"), "--log-file", str(log),
                      "--save", str(tmp_path / "save"))  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"new datasets found; training data is now ['{data}', '{incoming / 'more.lmdb'}']" in out
    assert "exiting the program at iteration 2 (--exit-interval)" in out
    assert sorted(logged(log)) == [1, 2]
    (events,) = (tmp_path / "tb" / "runs").glob("run*/events.out.tfevents.*")
    assert events.stat().st_size > 0
    assert not list((tmp_path / "save").rglob("latest_checkpointed_iteration.txt"))  # exits as the original


def test_fp16_without_deepspeed_is_one_line(tmp_path, capsys):
    data = write_dataset(tmp_path / "data.lmdb", count=8)
    assert main(train_argv(data, "--train-iters", "1", "--fp16")) == 2
    assert _error_line(capsys) == (
        "error: --fp16 training needs --deepspeed (its loss scaling); without DeepSpeed use --bf16 or fp32"
    )


def test_iteration_and_validation_lines_keep_the_original_format():
    from training.report import iteration_line, model_flops_per_token, validation_line

    line = iteration_line(200, 1000, 1500.0, 4e-4, 10.5, 10.25, 11.0, 1.0, 1234.4, 0.4567)
    assert line == (
        " iteration      200/    1000 | elapsed time per iteration (ms): 1500.0 | learning rate 4.000E-04 |"
        " lm loss 1.050000E+01 | img loss 1.025000E+01 | unscaled txt loss 1.100000E+01 | loss scale 1.0 |"
        " tokens/s 1234 | MFU 45.7% | ETA 0:20:00 |"
    )
    assert validation_line("iteration 5", 30.0) == (
        " validation loss at iteration 5 | LM loss: 3.000000E+01 | LM PPL: 4.851652E+08"  # exp(min(20, loss))
    )
    assert model_flops_per_token(1000, 2, 8, 16) == 6 * 1000 + 12 * 2 * 8 * 16


def test_the_matmul_ceiling_is_the_best_round_so_a_neighbours_burst_does_not_halve_it(monkeypatch):
    from training import report

    # Each timed round reads the clock twice; every round but the third (of the first product) is slowed.
    durations = iter([10.0, 10.0, 1.0, 10.0, 10.0, 10.0])
    clock = {"now": 0.0, "started": False}

    def perf_counter() -> float:
        if clock["started"]:
            clock["now"] += next(durations)
        clock["started"] = not clock["started"]
        return clock["now"]

    monkeypatch.setattr(report.time, "perf_counter", perf_counter)
    assert report.measure_matmul_flops(torch.device("cpu"), rounds=3) == 2.0 * 1024**3 * 5 / 1.0

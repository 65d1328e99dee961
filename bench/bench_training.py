"""Training speed on the CPU: ours through DeepSpeed against a plain torch loop and Hugging Face, in one run.

All three train a 12-layer, 768-hidden, 12-head GPT over the CogView vocabulary (58240 rows) on sequences of
1088 tokens (the CogView layout: text, then 1024 image codes) in fp32, with AdamW and gradient clipping:

(a) ours as pretrain_gpt2.py trains: ``GPT2Model`` through ``deepspeed.initialize`` with
    scripts/ds_config.json (``training.engine.setup_model_and_optimizer``), one iteration being
    ``training.step.train_step``: the original's batch, causal ``tril`` mask, positions and loss (image/text
    split by input token, ``--txt-loss-scale 5``);
(b) the same model, batch and loss in a plain torch loop (``torch.optim.AdamW``, fused as in (a)):
    DeepSpeed's overhead;
(c) Hugging Face ``GPT2LMHeadModel`` at the same sizes (SDPA attention), trained with its own loss and the
    fused AdamW its ``Trainer`` makes by default.

Each configuration runs in a fresh child process, so that its peak resident memory (``ru_maxrss``) is its
own, with glibc keeping freed memory as ``pretrain_gpt2.py`` runs (``common.malloc``; Hugging Face's child
too, so the comparison is of the models' code); (a) and (c) are measured again with activation
checkpointing. Model FLOPs per token are ``6 N + 12 L h s`` (N: parameters without the position table,
the tied output projection included; the second term is attention's score and value products, forward
and backward, counted in full as PaLM does), and MFU is the achieved model FLOP/s against the fp32 matmul
ceiling measured in the same run (inside each configuration's process, around its timed steps). Rates are
reported per wall second and per CPU second × threads ("idle"), which other jobs on a shared machine
disturb far less.
Run: ``.venv/bin/python bench/bench_training.py`` (after ``.venv/bin/pip install -r bench/requirements.txt``);
``--steps`` sets the timed steps per configuration.
"""

import argparse
import atexit
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import mpu  # noqa: E402  (after the repository is importable)
from common.malloc import keep_freed_memory  # noqa: E402
from model import GPT2Model  # noqa: E402
from training.ds_config import TORCH_ADAMW_OPTIONS  # noqa: E402

LAYERS, HIDDEN, HEADS = 12, 768, 12
SEQUENCE = 1088  # tokens per sample fed to the model: 1089 - 1, as pretrain_gpt2.py shifts them
TEXT_TOKENS = SEQUENCE - 1024 - 3  # [ROI1] text [BASE] [BOI1] 1024 codes (the last label is [EOI1])
IMAGE_TOKENS = 8192
DS_CONFIG = REPO_ROOT / "scripts" / "ds_config.json"  # the single-node tutorial's: Adam 4e-4, clip 1.0
TXT_LOSS_SCALE = 5.0  # the single-node tutorial's

METHODS = {
    "ours-deepspeed": "(a) ours through DeepSpeed",
    "ours-torch": "(b) ours, plain torch loop",
    "hf": "(c) HF GPT2LMHeadModel",
}


def cpu_model() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def matmul_ceiling(repeats: int = 3) -> tuple[float, float]:
    """Best fp32 matrix-product rate over 2048³ and this model's MLP shapes (1088×768 ↔ 3072), in GFLOP/s.

    Both kernels the CPU build has count: MKL's (``F.linear``, which (c) uses) and oneDNN's (which
    ``mpu.linear`` uses for (a) and (b), nearly twice as fast on AMD CPUs), so MFU is against the faster.
    Returns the wall-clock rate and the rate per CPU second times the thread count, which is what the
    threads would reach with the cores to themselves (see :func:`run_child`).
    """
    threads = torch.get_num_threads()
    best_wall = best_cpu = 0.0
    shapes = ((2048, 2048, 2048), (SEQUENCE, HIDDEN, 4 * HIDDEN), (SEQUENCE, 4 * HIDDEN, HIDDEN))
    for (m, k, n), product in itertools.product(shapes, (F.linear, mpu.linear)):
        a, w = torch.randn(m, k), torch.randn(n, k)
        product(a, w)
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            product(a, w)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            best_wall = max(best_wall, 2 * m * k * n / wall / 1e9)
            best_cpu = max(best_cpu, 2 * m * k * n * threads / max(cpu, 1e-9) / 1e9)
    return best_wall, best_cpu


def flops_per_token(params: int) -> float:
    """Training FLOPs per token: 6 N for the weights plus 12 L h s for attention scores and values."""
    return 6 * params + 12 * LAYERS * HIDDEN * SEQUENCE


def training_args(batch_size: int, checkpointing: bool, deepspeed: bool) -> argparse.Namespace:
    """pretrain_gpt2.py's arguments for the benchmark model (the defaults: dropout 0.1, seed 1234).

    With ``deepspeed`` the tutorial's config is used with its micro-batch set to ``batch_size``.
    """
    from arguments import get_args

    argv = ["--num-layers", str(LAYERS), "--hidden-size", str(HIDDEN), "--num-attention-heads", str(HEADS)]
    argv += ["--max-position-embeddings", str(SEQUENCE + 1), "--device", "cpu", "--train-iters", "1000"]
    argv += ["--img-tokenizer-num-tokens", str(IMAGE_TOKENS), "--txt-loss-scale", str(TXT_LOSS_SCALE)]
    argv += ["--checkpoint-activations"] if checkpointing else []
    if deepspeed:
        config = {**json.loads(DS_CONFIG.read_text()), "train_micro_batch_size_per_gpu": batch_size}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(config, file)
        atexit.register(os.unlink, file.name)
        argv += ["--deepspeed", "--deepspeed_config", file.name]
    else:
        lr = json.loads(DS_CONFIG.read_text())["optimizer"]["params"]["lr"]
        argv += ["--batch-size", str(batch_size), "--lr", str(lr)]
    return get_args(argv)


def prepare_training(args: argparse.Namespace) -> torch.Tensor:
    """Process group, seeds and vocabulary sizes as pretrain_gpt2.py sets them; one batch ``[b, 1089]``."""
    from data_utils import UnifiedTokenizer
    from training.distributed import initialize_distributed, set_random_seed
    from training.engine import set_vocab_sizes

    device = torch.device("cpu")
    initialize_distributed(args, device)
    set_random_seed(args.seed, device)
    tokenizer = UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=IMAGE_TOKENS)
    set_vocab_sizes(args, tokenizer)
    generator = torch.Generator().manual_seed(1)
    text = torch.randint(
        IMAGE_TOKENS + 100, IMAGE_TOKENS + 40000, (args.batch_size, TEXT_TOKENS), generator=generator
    )
    codes = torch.randint(0, IMAGE_TOKENS, (args.batch_size, 1024), generator=generator)

    def column(name: str) -> torch.Tensor:
        return torch.full((args.batch_size, 1), tokenizer[name])

    return torch.cat([column("[ROI1]"), text, column("[BASE]"), column("[BOI1]"), codes, column("[EOI1]")], 1)


def build_ours_deepspeed(batch_size: int, checkpointing: bool):
    """pretrain_gpt2.py's own engine and iteration: ``setup_model_and_optimizer`` and ``train_step``."""
    from training.engine import setup_model_and_optimizer, unwrap
    from training.step import train_step

    args = training_args(batch_size, checkpointing, deepspeed=True)
    text = prepare_training(args)
    engine, optimizer, lr_scheduler = setup_model_and_optimizer(args)
    batches = itertools.repeat({"text": text, "loss_mask": torch.ones_like(text)})

    def step() -> float:
        return float(train_step(batches, engine, optimizer, lr_scheduler, args, None, [])[0])

    return step, unwrap(engine)


def optimizer_step(
    loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: float
) -> float:
    """A plain torch loop's update: backward, gradient clipping to norm ``clip``, the step; the loss."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def build_ours_torch(batch_size: int, checkpointing: bool):
    """The same model, batch and loss (``forward_step``) with ``torch.optim.AdamW`` and clipping by hand."""
    from model import GPT2Config
    from training.engine import get_param_groups
    from training.step import forward_step

    args = training_args(batch_size, checkpointing, deepspeed=False)
    text = prepare_training(args)
    model = GPT2Model(GPT2Config.from_args(args, args.vocab_size, max_memory_length=0)).train()
    optimizer = torch.optim.AdamW(
        get_param_groups(model), lr=args.lr, weight_decay=args.weight_decay, **TORCH_ADAMW_OPTIONS
    )
    batches = itertools.repeat({"text": text, "loss_mask": torch.ones_like(text)})

    def step() -> float:
        loss, *_ = forward_step(batches, model, args, None, [])
        return optimizer_step(loss, model, optimizer, args.clip_grad)

    return step, model


def build_hf(batch_size: int, checkpointing: bool):
    """``GPT2LMHeadModel`` at the same sizes and dropout, AdamW with the same settings, its own loss."""
    from transformers import GPT2Config, GPT2LMHeadModel

    args = training_args(batch_size, checkpointing, deepspeed=False)
    text = prepare_training(args)
    config = GPT2Config(
        vocab_size=args.vocab_size,
        n_positions=args.max_position_embeddings,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        resid_pdrop=args.hidden_dropout,
        embd_pdrop=args.hidden_dropout,
        attn_pdrop=args.attention_dropout,
        attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(config).train()
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    if checkpointing:
        model.gradient_checkpointing_enable()
    # fused, as Hugging Face's Trainer makes it by default ("adamw_torch_fused")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, weight_decay=args.weight_decay, **TORCH_ADAMW_OPTIONS
    )
    tokens = text[:, :-1].contiguous()

    def step() -> float:
        loss = model(input_ids=tokens, labels=tokens).loss
        return optimizer_step(loss, model, optimizer, args.clip_grad)

    return step, model


BUILDERS = {"ours-deepspeed": build_ours_deepspeed, "ours-torch": build_ours_torch, "hf": build_hf}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_child(method: str, checkpointing: bool, batch_size: int, warmup: int, steps: int) -> dict:
    """Build one configuration here, train it, and return its timings, losses and memory.

    On a shared machine the speed available changes from minute to minute, so the matmul ceiling is
    measured again right before and after the timed steps, and every rate is given twice: per wall
    second, and per CPU second times the thread count ("idle": the rate with the cores to itself,
    which other processes' load changes far less).
    """
    keep_freed_memory()  # as pretrain_gpt2.py runs; every configuration gets it, Hugging Face's too
    baseline = peak_rss_mib()
    train_step, model = BUILDERS[method](batch_size, checkpointing)
    params = sum(
        p.numel() for name, p in model.named_parameters() if "position" not in name and "wpe" not in name
    )
    losses = [train_step() for _ in range(warmup)]
    before = matmul_ceiling()
    start, cpu_start = time.perf_counter(), time.process_time()
    losses += [train_step() for _ in range(steps)]
    elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
    after = matmul_ceiling()
    tokens = batch_size * SEQUENCE * steps
    return {
        "params": params,
        "tokens_per_s": tokens / elapsed,
        "idle_tokens_per_s": tokens * torch.get_num_threads() / cpu_elapsed,
        "step_s": elapsed / steps,
        "ceiling": (before[0] + after[0]) / 2,
        "idle_ceiling": (before[1] + after[1]) / 2,
        "losses": losses,
        "peak_rss_mib": peak_rss_mib(),
        "baseline_rss_mib": baseline,
    }


def measure(method: str, checkpointing: bool, batch_size: int, warmup: int, steps: int) -> dict:
    """Run one configuration in a fresh python process (its own peak memory) and parse its result."""
    command = [sys.executable, __file__, "--child", method, "--batch-size", str(batch_size)]
    command += ["--warmup", str(warmup), "--steps", str(steps)]
    command += ["--checkpointing"] if checkpointing else []
    environment = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"bench_training: {method} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=1)
    # Three untimed steps: the process's heap is still growing in the second (its cross entropy alone
    # faulted in a fresh 254 MB block, 0.46 s), so fewer would time start-up rather than training.
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--child", choices=sorted(BUILDERS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_child(args.child, args.checkpointing, args.batch_size, args.warmup, args.steps)
        print(json.dumps(result))
        return

    threads = torch.get_num_threads()
    print(f"CPU: {cpu_model()} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores, ", end="")
    print(f"{threads} threads, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f} at the start")
    wall_ceiling, idle_ceiling = matmul_ceiling()
    print(f"fp32 matmul ceiling at the start: {wall_ceiling:.1f} GFLOP/s ({idle_ceiling:.1f} idle)")
    print(f"model: {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, sequence {SEQUENCE}, ", end="")
    print(f"batch {args.batch_size}, ", end="")
    print(f"fp32, dropout 0.1; {args.warmup} warm-up + {args.steps} timed steps per configuration")
    configurations = [("ours-deepspeed", False), ("ours-deepspeed", True), ("ours-torch", False)]
    configurations += [("hf", False), ("hf", True)]
    runs = {}
    for method, checkpointing in configurations:
        # checkpointed runs are there for their memory: the first step reaches the peak (Adam's state too)
        warmup, steps = (0, 1) if checkpointing else (args.warmup, args.steps)
        run = runs[method, checkpointing] = measure(method, checkpointing, args.batch_size, warmup, steps)
        flops = flops_per_token(run["params"]) / 1e9
        run["mfu"] = run["tokens_per_s"] * flops / run["ceiling"]
        run["idle_mfu"] = run["idle_tokens_per_s"] * flops / run["idle_ceiling"]
        label = METHODS[method] + (" + activation ckpt" if checkpointing else "")
        print(f"  measured {label}: {run['tokens_per_s']:.1f} tokens/s", file=sys.stderr, flush=True)

    print(f"\n{'':<48}{'-- per wall second --':^30}{'-- idle --':^23}")
    header = f"{'configuration':<48}{'tokens/s':>9}{'s/step':>7}{'ceiling':>8}{'MFU':>6}"
    print(f"{header}{'tokens/s':>9}{'ceiling':>8}{'MFU':>6}{'peak MiB':>10}{'loss':>7}")
    for (method, checkpointing), run in runs.items():
        label = METHODS[method] + (" + act. ckpt, 1 step" if checkpointing else "")
        print(
            f"{label:<48}{run['tokens_per_s']:9.1f}{run['step_s']:7.1f}{run['ceiling']:8.1f}{run['mfu']:6.1%}"
            f"{run['idle_tokens_per_s']:9.1f}{run['idle_ceiling']:8.1f}{run['idle_mfu']:6.1%}"
            f"{run['peak_rss_mib']:10.0f}{run['losses'][-1]:7.3f}"
        )
    ours, torch_loop, hf = (runs[method, False] for method in METHODS)
    print(f"N = {ours['params'] / 1e6:.1f} M (ours), {hf['params'] / 1e6:.1f} M (HF); ", end="")
    print(f"{flops_per_token(ours['params']) / 1e9:.3f} GFLOP per token; ceilings in GFLOP/s; peak = max RSS")
    overhead, idle_overhead = (ours[key] / torch_loop[key] for key in ("tokens_per_s", "idle_tokens_per_s"))
    print(f"DeepSpeed overhead: (a) / (b) tokens/s = {overhead:.2f} ({idle_overhead:.2f} idle)")
    ratio, idle_ratio = (ours[key] / hf[key] for key in ("tokens_per_s", "idle_tokens_per_s"))
    print(
        f"headline: (a) ours through DeepSpeed / (c) HF = {ratio:.2f}x tokens/s ({idle_ratio:.2f}x idle), "
        f"(a) MFU {ours['mfu']:.1%} ({ours['idle_mfu']:.1%} idle)"
    )


if __name__ == "__main__":
    main()

"""Peak memory of loading the 4B model on the CPU, its sampling speed there, and the KV cache's size.

One command: ``.venv/bin/python bench/bench_memory.py``. It

1. writes a random 4B checkpoint in the released layout (fp16, 7.9 GB) to a temporary folder
   (``bench/random_checkpoint.py``), deleted at the end;
2. loads it with ``generation.runtime.build_model`` (meta model, memory-mapped file, tensor-by-tensor
   conversion) into fp32 and into bf16, each in a fresh child process, one at a time, and reads the child's
   peak resident memory (``VmHWM``, which counts file pages mapped in as well) against the weights' size;
3. in the same child, times decoding steps of the 4B model on the CPU at batch 1 and 4 and estimates the
   time of one 256² image (1024 tokens): steps are timed at the prompt's length and the extra cost of a
   long cache (attention over up to 1088 positions) is timed on one layer and added for all 48 (a whole
   image would take tens of minutes); the floor is reading every weight once per step at copy bandwidth;
4. runs the 4B model in fp16 on the meta device to size the key/value cache per batch size and check that
   it is allocated once, before the first step, and never grows.

The fp32 case needs about 18 GB free; it is skipped, with a message, when the machine has less available.
The last line gives the headline ratios: peak memory / weights for fp32 and bf16 (target: at most 1.15).
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_generation import copy_bandwidth_gbs
from random_checkpoint import ModelSize, write_random_checkpoint

import mpu
from arguments import get_args
from common.memory import MEMINFO, available_memory_bytes
from generation.runtime import build_model, model_dtype
from generation.sampling import sample
from model.partition import COGVIEW_NUM_TOKENS

IMAGE_TOKENS, PROMPT, NEW_TOKENS, TOP_K = 8192, 64, 1024, 200
DTYPE_FLAGS = {"fp32": [], "bf16": ["--bf16"], "fp16": ["--fp16"]}
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}  # per parameter
TARGET = 1.15
GB = 1e9


def status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``: peak resident memory of this process), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def available_bytes() -> int:
    """``MemAvailable`` of the machine, in bytes (the benchmark reads ``/proc`` anyway)."""
    available = available_memory_bytes()
    if available is None:
        raise RuntimeError(f"{MEMINFO} has no MemAvailable")
    return available


# --- child processes ------------------------------------------------------------------------------------


def decode_step_seconds(model, batch: int, steps: int = 4) -> float:
    """Median time of one sampling step at batch ``batch`` just after a ``PROMPT``-token context."""
    cache = model.new_kv_cache(PROMPT + steps + 1)
    ids = torch.randint(IMAGE_TOKENS, COGVIEW_NUM_TOKENS - 27, (1, PROMPT))
    model.forward_cached(ids, torch.arange(PROMPT)[None], cache, last_only=True)
    cache.expand_batch(batch)
    token = torch.zeros(batch, 1, dtype=torch.long)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        position = torch.full((batch, 1), PROMPT + step)
        logits = model.forward_cached(token, position, cache, last_only=True, vocab_range=(0, IMAGE_TOKENS))
        token = sample(logits[:, -1].float(), top_k=TOP_K)[0][:, None]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def layer_step_seconds(layer, batch: int, length: int, repeats: int = 3) -> float:
    """Fastest time of one layer's step for ``batch`` queries over a cache of ``length`` positions."""
    attention = layer.attention
    dtype = attention.dense.weight.dtype
    heads, head_dim = attention.num_attention_heads_per_partition, attention.hidden_size_per_attention_head
    cache = mpu.LayerKVCache(length + 1)
    cache.append(*[torch.zeros(batch, heads, length, head_dim, dtype=dtype)] * 2)
    hidden = torch.randn(batch, 1, heads * head_dim, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        cache.length = length
        start = time.perf_counter()
        layer(hidden, None, kv_cache=cache)
        best = min(best, time.perf_counter() - start)
    return best


def measure_speed(model, weight_bytes: int, batches: tuple[int, ...] = (1, 4)) -> list[dict]:
    """Seconds per token, its floor, and the estimated time of a 1024-token image, per batch size."""
    bandwidth = copy_bandwidth_gbs() * GB
    layers = model.transformer.layers
    results = []
    for batch in batches:
        step = decode_step_seconds(model, batch)
        short = layer_step_seconds(layers[0], batch, PROMPT)
        long = layer_step_seconds(layers[0], batch, PROMPT + NEW_TOKENS - 1)
        # the attention cost grows linearly with the cache: on average by half the long-cache extra per layer
        image = NEW_TOKENS * (step + len(layers) * max(long - short, 0.0) / 2)
        floor = weight_bytes / bandwidth
        results.append(
            {
                "batch": batch,
                "step_s": step,
                "token_s": image / NEW_TOKENS / batch,
                "floor_token_s": floor / batch,
                "image_s": image,
                "bandwidth_gbs": bandwidth / GB,
            }
        )
    return results


def child_load(folder: Path, dtype: str, speed: bool, size: ModelSize) -> dict:
    """Load the checkpoint in ``folder`` as generate_samples does; peak memory, and optionally speed."""
    args = get_args(
        ["--load", str(folder), *size.generation_arguments(), "--device", "cpu", *DTYPE_FLAGS[dtype]]
    )
    baseline = status_bytes("VmHWM")
    start = time.perf_counter()
    model = build_model(args, COGVIEW_NUM_TOKENS, torch.device("cpu"), model_dtype(args))
    seconds = time.perf_counter() - start
    peak = status_bytes("VmHWM")
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    result = {"dtype": dtype, "weights": weights, "baseline": baseline, "peak": peak, "load_s": seconds}
    print(f"loaded: {json.dumps(result)}", file=sys.stderr)  # kept even if the speed part is killed
    if speed:  # sampling as filling_sequence runs it: with packed weight copies where they fit
        with torch.inference_mode(), mpu.packed_linear_weights(model) as packed:
            result["speed"] = measure_speed(model, weights)
        result["packed"] = packed
    return result


def kv_cache_table(size: ModelSize, batches: tuple[int, ...] = (1, 2, 4, 8, 16)) -> list[dict]:
    """The model in fp16 on the meta device: KV-cache bytes per batch size, and whether it ever regrows."""
    model = size.meta_model().half()
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    rows = []
    with torch.inference_mode():
        for batch in batches:
            cache = model.new_kv_cache(size.positions)  # what filling_sequence allocates: the whole sequence
            ids = torch.zeros(1, PROMPT, dtype=torch.long, device="meta")
            model.forward_cached(ids, torch.arange(PROMPT, device="meta")[None], cache, last_only=True)
            cache.expand_batch(batch)
            buffers = [layer.keys for layer in cache.layers]
            token = torch.zeros(batch, 1, dtype=torch.long, device="meta")
            for step in range(3):
                position = torch.full((batch, 1), PROMPT + step, device="meta")
                model.forward_cached(token, position, cache, last_only=True, vocab_range=(0, IMAGE_TOKENS))
            cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
            rows.append(
                {
                    "batch": batch,
                    "weights": weights,
                    "cache": cache_bytes,
                    "regrew": any(
                        a is not layer.keys for a, layer in zip(buffers, cache.layers, strict=True)
                    ),
                }
            )
    return rows


# --- the driver -----------------------------------------------------------------------------------------


def run_child(folder: Path, dtype: str, speed: bool, size: ModelSize) -> dict:
    """Run this script as a child (a fresh process, so its peak memory is its own); its JSON result."""
    task = json.dumps({"folder": str(folder), "dtype": dtype, "speed": speed, "size": vars(size)})
    completed = subprocess.run(
        [sys.executable, __file__, "--child", task], stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def print_report(loads: list[dict], skipped: list[str], cache: list[dict]) -> None:
    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}")
    header = ("load into", "weights GB", "peak GB", "peak/weights", "(less start-up)", "load s")
    print("{:<10} {:>10} {:>8} {:>12} {:>15} {:>6}".format(*header))
    for load in loads:
        ratio, net = load["peak"] / load["weights"], (load["peak"] - load["baseline"]) / load["weights"]
        print(
            f"{load['dtype']:<10} {load['weights'] / GB:>10.2f} {load['peak'] / GB:>8.2f} {ratio:>12.3f} "
            f"{net:>15.3f} {load['load_s']:>6.1f}"
        )
    for reason in skipped:
        print(reason)
    speeds = [(load, row) for load in loads for row in load.get("speed", [])]
    if speeds:
        header = ("on the CPU", "batch", "s/token", "floor", "floor/ours", "1024-token image s", "weights")
        print("\n{:<14} {:>5} {:>8} {:>7} {:>10} {:>19} {:>8}".format(*header))
        for load, row in speeds:
            print(
                f"{load['dtype']:<14} {row['batch']:>5} {row['token_s']:>8.3f} {row['floor_token_s']:>7.3f} "
                f"{row['floor_token_s'] / row['token_s']:>10.2f} {row['image_s']:>19.0f} "
                f"{'packed' if load['packed'] else 'plain':>8}"
            )
        print(f"(estimated from timed steps; copy bandwidth {speeds[0][1]['bandwidth_gbs']:.1f} GB/s)")
    print(f"\n{'fp16 KV cache':<17} {'batch':>5} {'cache GB':>9} {'weights+cache GB':>17} {'regrows':>8}")
    for row in cache:
        total = (row["weights"] + row["cache"]) / GB
        regrew = "yes" if row["regrew"] else "no"
        print(f"{'':<17} {row['batch']:>5} {row['cache'] / GB:>9.2f} {total:>17.2f} {regrew:>8}")
    ratios = ", ".join(f"{load['dtype']} {load['peak'] / load['weights']:.3f}" for load in loads)
    print(f"peak memory / weights: {ratios or 'none measured'} (target <= {TARGET})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPE_FLAGS))
    parser.add_argument("--no-speed", action="store_true", help="only measure loading")
    parser.add_argument("--checkpoint", type=Path, help="use this checkpoint folder instead of a random one")
    parser.add_argument(
        "--size",
        type=int,
        nargs=3,
        metavar=("LAYERS", "HIDDEN", "HEADS"),
        help="a smaller model (smoke test)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        task = json.loads(args.child)
        result = child_load(Path(task["folder"]), task["dtype"], task["speed"], ModelSize(**task["size"]))
        print(json.dumps(result))
        return

    size = ModelSize(*args.size) if args.size else ModelSize()
    folder = args.checkpoint or Path(tempfile.mkdtemp(prefix="cogview-4b-"))
    loads, skipped = [], []
    try:
        if args.checkpoint is None:
            write_random_checkpoint(folder, size)
        parameters = sum(t.numel() for t in size.meta_model().state_dict().values())
        for dtype in args.dtypes:
            needed = parameters * BYTES[dtype] * TARGET
            if available_bytes() < needed:
                available = available_bytes() / GB
                skipped.append(
                    f"{dtype}: skipped, {available:.1f} GB available but {needed / GB:.1f} GB needed"
                )
                continue
            print(f"loading into {dtype} ...", file=sys.stderr)
            loads.append(run_child(folder, dtype, not args.no_speed, size))
    finally:
        if args.checkpoint is None:
            shutil.rmtree(folder)
    print_report(loads, skipped, kv_cache_table(size))


if __name__ == "__main__":
    main()

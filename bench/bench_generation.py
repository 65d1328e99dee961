"""Image-token generation speed on the CPU: our KV-cache sampler against two baselines, in one run.

(a) ours: ``generation.filling_sequence`` (key/value cache, image-only output projection);
(b) the original CogView algorithm: one token per forward, every layer's keys and values
    recomputed from the stored hidden states ("mems"), i.e. ``GPT2Model.forward(..., *mems)``;
(c) Hugging Face ``GPT2LMHeadModel.generate(use_cache=True)`` at identical sizes.

All three sample 1024 image tokens after a 64-token prompt, batch 4, top-k 200, fp32. (b) costs
O(length) per step, so by default its per-step time is measured at evenly spaced lengths and
integrated over the 1024 steps (``--full-baseline`` runs the whole loop instead, ~20 minutes).
The floor line is the speed at which merely reading the weights once per step (at the measured
copy bandwidth) would allow. Then a table over batch sizes 1, 4, 8, 16 (ours, HF and the floor, with
``--table-tokens`` image tokens each), and the split of one step of ours at the middle of the image
(``PROMPT + 512`` cached positions): the linear layers, attention over the cache and sampling, each timed
alone with the same shapes, and the rest (Python and dispatch, LayerNorms, GeLU, residual adds, cache
writes) by difference.
Run: ``.venv/bin/python bench/bench_generation.py``.
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mpu
from data_utils import UnifiedTokenizer
from generation import filling_sequence
from generation.sampling import InvalidSlices, sample
from model import GPT2Model
from model.partition import padded_vocab_size

LAYERS, HIDDEN, HEADS = 12, 768, 12
IMAGE_TOKENS = 8192


def build_model(vocab: int, positions: int) -> GPT2Model:
    torch.manual_seed(0)
    return GPT2Model(LAYERS, vocab, HIDDEN, HEADS, 0.0, 0.0, 0.0, positions, 2048, False).eval()


def prompt_ids(tokenizer: UnifiedTokenizer, prompt_length: int) -> list[int]:
    """``[ROI1] text... [BASE] [BOI1]`` with random text ids, ``prompt_length`` tokens in all."""
    rng = np.random.default_rng(0)
    text_first = tokenizer.num_image_tokens
    text = rng.integers(text_first + 100, text_first + 40000, prompt_length - 3).tolist()
    return [tokenizer["[ROI1]"], *text, tokenizer["[BASE]"], tokenizer["[BOI1]"]]


def bench_ours(model, tokenizer, prompt, new_tokens, batch, top_k) -> float:
    seq = torch.tensor(prompt + [-1] * new_tokens)
    args = SimpleNamespace(
        batch_size=batch, max_inference_batch_size=batch, top_k=top_k, top_p=0.0, temperature=1.0
    )
    filling_sequence(model, seq[: len(prompt) + 8], args, tokenizer=tokenizer)  # warm-up
    start = time.perf_counter()
    output = filling_sequence(model, seq, args, tokenizer=tokenizer)
    elapsed = time.perf_counter() - start
    assert (
        output.shape == (batch, len(prompt) + new_tokens) and (output[:, len(prompt) :] < IMAGE_TOKENS).all()
    )
    return batch * new_tokens / elapsed


@torch.inference_mode()
def original_step_seconds(model, batch, memory_length, repeats=2) -> float:
    """Time one step of the original algorithm with ``memory_length`` positions already generated."""
    mems = [torch.randn(batch, memory_length, HIDDEN) for _ in range(LAYERS + 1)]
    token = torch.randint(0, IMAGE_TOKENS, (batch, 1))
    position = torch.full((batch, 1), memory_length)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        logits, *_ = model(token, position, 0, None, None, 0, *mems)
        torch.topk(logits[:, -1], 200)
        timings.append(time.perf_counter() - start)
    return min(timings)


def bench_original(model, prompt_length, new_tokens, batch, full: bool, samples: int = 6) -> float:
    if full:
        return bench_original_full(model, prompt_length, new_tokens, batch)
    lengths = np.linspace(prompt_length, prompt_length + new_tokens - 1, samples).round().astype(int)
    seconds = [original_step_seconds(model, batch, int(n)) for n in lengths]
    # Per-step cost is linear in the memory length: integrate the measured points over every step.
    total = np.interp(np.arange(prompt_length, prompt_length + new_tokens), lengths, seconds).sum()
    return batch * new_tokens / total


@torch.inference_mode()
def bench_original_full(model, prompt_length, new_tokens, batch) -> float:
    tokens = torch.randint(0, IMAGE_TOKENS, (batch, prompt_length))
    start = time.perf_counter()
    logits, *mems = model(tokens, torch.arange(prompt_length).expand(batch, -1), 0)
    for step in range(new_tokens):
        values, indices = torch.topk(logits[:, -1, :IMAGE_TOKENS], 200)
        choice = indices.gather(1, torch.multinomial(torch.softmax(values, -1), 1))
        position = torch.full((batch, 1), prompt_length + step)
        logits, *mems = model(choice, position, 0, None, None, 0, *mems)
    return batch * new_tokens / (time.perf_counter() - start)


def bench_huggingface(vocab, positions, prompt, new_tokens, batch, top_k) -> float:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        activation_function="gelu_new",
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(config).eval()
    input_ids = torch.tensor([prompt] * batch)
    kwargs = dict(do_sample=True, top_k=top_k, use_cache=True, pad_token_id=0)
    with torch.inference_mode():
        hf.generate(input_ids, max_new_tokens=8, min_new_tokens=8, **kwargs)
        start = time.perf_counter()
        output = hf.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    assert output.shape == (batch, len(prompt) + new_tokens)
    return batch * new_tokens / (time.perf_counter() - start)


def _median_seconds(run, repeats: int = 5) -> float:
    run()  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def _decoding_step(model: GPT2Model, tokenizer, batch: int, length: int, top_k: int):
    """One step of ours after ``length`` cached positions, as ``filling_sequence`` runs it (repeatable)."""
    cache = model.new_kv_cache(length + 1)
    ids = torch.zeros(1, length, dtype=torch.long)
    model.forward_cached(ids, torch.arange(length)[None], cache, last_only=True)
    cache.expand_batch(batch)
    state = InvalidSlices(tokenizer)
    state.update(tokenizer["[BOI1]"])
    token = torch.zeros(batch, 1, dtype=torch.long)
    position = torch.full((batch, 1), length)

    def step() -> None:
        for layer in cache.layers:
            layer.length = length
        logits = model.forward_cached(token, position, cache, last_only=True, vocab_range=state.allowed)
        sample(state.mask_(logits[:, -1].float(), state.allowed[0]), 1.0, top_k)

    return step


@torch.inference_mode()
def step_split(model: GPT2Model, tokenizer, batch: int, length: int, top_k: int) -> dict[str, float]:
    """Seconds of one step of ours, and of its parts (see the module docstring), with the weights packed
    as ``filling_sequence`` packs them."""
    with mpu.packed_linear_weights(model):
        return _step_split(model, tokenizer, batch, length, top_k)


def _step_split(model: GPT2Model, tokenizer, batch: int, length: int, top_k: int) -> dict[str, float]:
    total = _median_seconds(_decoding_step(model, tokenizer, batch, length, top_k))
    hidden = torch.randn(batch, 1, HIDDEN)
    wide = torch.randn(batch, 1, 4 * HIDDEN)
    image_rows = model.word_embeddings.weight[:IMAGE_TOKENS]

    def linears() -> None:
        for layer in model.transformer.layers:
            attention, mlp = layer.attention, layer.mlp
            mpu.linear(hidden, attention.query_key_value.weight, attention.query_key_value.bias)
            mpu.linear(hidden, attention.dense.weight, attention.dense.bias)
            mpu.linear(hidden, mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias)
            mpu.linear(wide, mlp.dense_4h_to_h.weight, mlp.dense_4h_to_h.bias)
        mpu.linear(hidden, image_rows)

    head_dim = HIDDEN // HEADS
    shape = (batch, HEADS, length + 1, head_dim)
    caches = [(torch.randn(shape), torch.randn(shape)) for _ in range(LAYERS)]
    query = torch.randn(batch, HEADS, 1, head_dim)

    def attention() -> None:
        for keys, values in caches:
            mpu.fused_attention(query, keys, values, None, 0.0)

    logits = torch.randn(batch, IMAGE_TOKENS)
    sampling = _median_seconds(lambda: sample(logits.clone(), 1.0, top_k))
    parts = {
        "linear layers": _median_seconds(linears),
        "attention over the cache": _median_seconds(attention),
    }
    parts["sampling (top-k, softmax, draw)"] = sampling
    parts["rest: Python, LayerNorms, GeLU, adds, cache writes"] = total - sum(parts.values())
    return {"step": total, **parts}


def copy_bandwidth_gbs() -> float:
    source = torch.empty(128 * 2**20 // 4 * 4, dtype=torch.float32).fill_(1.0)  # 512 MiB
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * 4 / best / 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=1024)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=200)
    parser.add_argument(
        "--full-baseline", action="store_true", help="run the original algorithm's whole loop"
    )
    parser.add_argument("--skip-hf", action="store_true", help="leave out the Hugging Face baseline")
    parser.add_argument(
        "--batches", type=int, nargs="*", default=[1, 4, 8, 16], help="batch sizes of the table"
    )
    parser.add_argument("--table-tokens", type=int, default=256, help="image tokens per run in the table")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 is steadier on a shared machine"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = UnifiedTokenizer(None, "cpu", img_tokenizer_num_tokens=IMAGE_TOKENS)
    vocab = padded_vocab_size(len(tokenizer), 1)
    split_length = args.prompt_length + 512  # the step at the middle of a 1024-token image
    positions = max(args.prompt_length + max(args.new_tokens, args.table_tokens), split_length + 1)
    model = build_model(vocab, positions)
    prompt = prompt_ids(tokenizer, args.prompt_length)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth_gbs()
    floor = args.batch_size * bandwidth * 1e9 / weight_bytes

    table = []
    for batch in args.batches:
        ours_b = bench_ours(model, tokenizer, prompt, args.table_tokens, batch, args.top_k)
        hf_b = (
            None
            if args.skip_hf
            else bench_huggingface(vocab, positions, prompt, args.table_tokens, batch, args.top_k)
        )
        table.append((batch, ours_b, hf_b, batch * bandwidth * 1e9 / weight_bytes))
    split = step_split(model, tokenizer, args.batch_size, split_length, args.top_k)

    ours = bench_ours(model, tokenizer, prompt, args.new_tokens, args.batch_size, args.top_k)
    original = bench_original(model, args.prompt_length, args.new_tokens, args.batch_size, args.full_baseline)
    hf = (
        None
        if args.skip_hf
        else bench_huggingface(vocab, positions, prompt, args.new_tokens, args.batch_size, args.top_k)
    )

    print(
        f"# {LAYERS} layers, hidden {HIDDEN}, vocab {vocab}; {args.prompt_length}-token prompt, "
        f"{args.new_tokens} image tokens, batch {args.batch_size}, top-k {args.top_k}, fp32, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}"
    )
    print(f"{'method':<52} {'tokens/s':>9}")
    print(f"{'(a) ours: KV cache (filling_sequence)':<52} {ours:>9.1f}")
    label = "(b) original: recompute K/V from mems" + ("" if args.full_baseline else " (integrated)")
    print(f"{label:<52} {original:>9.1f}")
    if hf is not None:
        print(f"{'(c) HF GPT2LMHeadModel.generate(use_cache=True)':<52} {hf:>9.1f}")
    print(f"{'floor: weights read once per step at copy bandwidth':<52} {floor:>9.1f}")
    if table:
        print(f"\nbatch table, {args.table_tokens} image tokens each (tokens/s):")
        print(f"{'batch':>5} {'ours':>8} {'HF':>8} {'floor':>8} {'ours/HF':>8} {'ours/floor':>10}")
        for batch, ours_b, hf_b, floor_b in table:
            hf_text = f"{hf_b:>8.1f}" if hf_b is not None else f"{'-':>8}"
            ratio = f"{ours_b / hf_b:>8.2f}" if hf_b is not None else f"{'-':>8}"
            print(f"{batch:>5} {ours_b:>8.1f} {hf_text} {floor_b:>8.1f} {ratio} {ours_b / floor_b:>10.2f}")
    print(f"\none step of ours at batch {args.batch_size} with {split_length} cached positions:")
    for part, seconds in split.items():
        print(f"  {part:<44} {seconds * 1e3:>7.1f} ms {seconds / split['step']:>6.0%}")
    print(f"ours / floor = {ours / floor:.2f}")
    headline = f"ours / original = {ours / original:.1f}x"
    if hf is not None:
        headline += f", ours / HF = {ours / hf:.1f}x"
    print(headline)


if __name__ == "__main__":
    main()

"""The whole GPT2Model at model-parallel size 2 equals size 1; data parallelism averages gradients."""

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import mpu
from model import GPT2Model
from tests.helpers.distributed import run_distributed

VOCAB, SEQ = 256, 16


def _build(checkpointing: bool) -> GPT2Model:
    torch.manual_seed(1234)
    return GPT2Model(2, VOCAB, 32, 4, 0.0, 0.0, 0.0, SEQ, 0, checkpointing, parallel_output=True)


def _batch():
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:], torch.arange(SEQ).expand(2, SEQ)


def _train_step(model: GPT2Model, tokens, labels, positions):
    mask = torch.ones(1, 1, SEQ, SEQ).tril()
    logits = model.train()(tokens, positions, mask)[0]
    loss = mpu.vocab_parallel_cross_entropy(logits, labels).mean()
    loss.backward()
    gathered = mpu.gather_from_model_parallel_region(logits.detach())
    grads = {name: p.grad for name, p in model.named_parameters()}
    return gathered, loss.detach(), grads


def _at_mp2(rank, world_size, checkpointing):
    mpu.initialize_model_parallel(2)
    model = _build(checkpointing)
    attrs = {
        n: (getattr(p, "partition_dim", None), getattr(p, "partition_stride", 1))
        for n, p in model.named_parameters()
        if getattr(p, "model_parallel", False)
    }
    return (*_train_step(model, *_batch()), attrs)


def _shard(full, dim, stride, rank, world_size=2):
    chunks = torch.chunk(full, world_size * stride, dim=dim)
    return torch.cat(chunks[rank::world_size], dim=dim)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gpt2_model_at_mp2_equals_mp1(checkpointing):
    logits, loss, grads = _train_step(_build(checkpointing), *_batch())
    for rank, (p_logits, p_loss, p_grads, attrs) in enumerate(run_distributed(_at_mp2, 2, checkpointing)):
        torch.testing.assert_close(p_logits, logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p_loss, loss, atol=1e-6, rtol=1e-6)
        assert set(p_grads) == set(grads)
        for name, grad in grads.items():
            expected = _shard(grad, *attrs[name], rank) if name in attrs else grad
            torch.testing.assert_close(p_grads[name], expected, atol=1e-5, rtol=1e-4, msg=name)


def _data_parallel(rank, world_size):
    mpu.initialize_model_parallel(1)
    model = DistributedDataParallel(_build(False), process_group=mpu.get_data_parallel_group())
    tokens, labels, positions = _batch()
    mine = slice(rank, rank + 1)  # each rank sees one of the two samples
    _train_step(model, tokens[mine], labels[mine], positions[mine])
    return {name: p.grad for name, p in model.module.named_parameters()}


def test_data_parallel_gradients_are_the_average_over_ranks():
    # PB-relax LayerNorm takes its max over the whole batch, so the reference is the mean of the
    # per-sample gradients (each computed alone), not the gradient of the two-sample batch.
    tokens, labels, positions = _batch()
    per_sample = [
        _train_step(_build(False), tokens[i : i + 1], labels[i : i + 1], positions[i : i + 1])[2]
        for i in range(2)
    ]
    expected = {name: (per_sample[0][name] + per_sample[1][name]) / 2 for name in per_sample[0]}
    for grads in run_distributed(_data_parallel, 2):
        for name, grad in expected.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)

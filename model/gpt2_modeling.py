"""``GPT2Model``: CogView's GPT, with the released checkpoints' parameter names and numerics."""

import torch
from torch import nn

import mpu

from .config import GPT2Config


class GPT2Model(nn.Module):
    """Word embedding (vocab-parallel), the CogView transformer, and an output head tied to the embedding.

    Built from a :class:`GPT2Config`, or with the original's arguments, positional in its order or by
    name, ``GPT2Model(num_layers, vocab_size, hidden_size, num_attention_heads, embedding_dropout_prob,
    attention_dropout_prob, output_dropout_prob, max_sequence_length, max_memory_length,
    checkpoint_activations, checkpoint_num_layers=1, parallel_output=True, query_window=128,
    key_window_times=6, num_pivot=768)`` (defaults from ``mpu.TransformerConfig``). Keyword-only extras:
    ``pb_relax_attention`` enables the paper's α=32 attention (equal to the plain softmax in fp32, meant
    for fp16 training; the released weights were trained without it), and ``use_fused_attention``
    selects ``F.scaled_dot_product_attention`` (exact; on by default). ``forward`` keeps the original's
    signature.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        if len(args) == 1 and not kwargs and isinstance(args[0], GPT2Config):
            config = args[0]
        else:
            config = GPT2Config.from_call(args, kwargs)
        self.config = config
        self.parallel_output = config.parallel_output
        self.num_layers = config.transformer.num_layers
        init_method = mpu.unscaled_init_method(config.transformer.init_method_std)
        self.word_embeddings = mpu.VocabParallelEmbedding(
            config.vocab_size, config.transformer.hidden_size, init_method=init_method
        )
        self.transformer = mpu.GPT2ParallelTransformer(config.transformer)

    def logits(self, hidden_states: torch.Tensor, gather: bool | None = None) -> torch.Tensor:
        """Project final hidden states ``[b, s, h]`` onto the tied vocabulary: ``[b, s, V/p]`` or gathered."""
        logits_parallel = mpu.linear(
            mpu.copy_to_model_parallel_region(hidden_states), self.word_embeddings.weight
        )
        if gather if gather is not None else not self.parallel_output:
            return mpu.gather_from_model_parallel_region(logits_parallel)
        return logits_parallel

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | int,
        txt_indices_bool: torch.Tensor | None = None,
        img_indices_bool: torch.Tensor | None = None,
        is_sparse: int = 0,
        *mems: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """The original's forward: ``input_ids``/``position_ids`` ``[b, s]`` → ``(logits, *new_mems)``.

        ``attention_mask`` is a 0/1 tensor ``[*, 1, s, mem_len + s]`` or an int ``sep`` (causal, with the
        first ``sep`` positions visible to all; see ``mpu.transformer.visibility_from_mask``); ``mems`` are
        the original's per-layer hidden states, kept when ``max_memory_length > 0``.
        """
        embeddings = self.word_embeddings(input_ids)
        output, *new_mems = self.transformer(
            embeddings, position_ids, attention_mask, txt_indices_bool, img_indices_bool, is_sparse, *mems
        )
        return (self.logits(output), *new_mems)

    def new_kv_cache(self, capacity: int = 0) -> mpu.KVCache:
        """An empty key/value cache for :meth:`forward_cached` (buffers allocated on first use)."""
        return mpu.KVCache(self.num_layers, capacity)

    def forward_cached(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        kv_cache: mpu.KVCache,
        attention_mask: torch.Tensor | int = 0,
        last_only: bool = False,
        vocab_range: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Incremental decoding: run the new tokens ``[b, sq]`` after those already in ``kv_cache``.

        Returns gathered logits ``[b, sq, V]`` (``[b, 1, V]`` with ``last_only``), equal to the
        corresponding rows of a full forward over the whole sequence. ``vocab_range=(lo, hi)`` returns
        only the logits of ids ``lo..hi-1`` (``[..., hi - lo]``): when sampling an image token only the
        image ids are allowed, and projecting onto them alone skips most of the output matmul.
        """
        embeddings = self.word_embeddings(input_ids)
        output = self.transformer.forward_cached(embeddings, position_ids, kv_cache, attention_mask)
        if last_only:
            output = output[:, -1:]
        if vocab_range is not None and mpu.get_model_parallel_world_size() == 1:
            return mpu.linear(output, self.word_embeddings.weight[vocab_range[0] : vocab_range[1]])
        logits = self.logits(output, gather=True)
        return logits[..., vocab_range[0] : vocab_range[1]] if vocab_range is not None else logits


def gpt2_get_params_for_weight_decay_optimization(module: nn.Module) -> tuple[dict, dict]:
    """Two optimizer groups: LayerNorm parameters and all biases get no weight decay, the rest do."""
    decay = {"params": []}
    no_decay = {"params": [], "weight_decay": 0.0}
    for submodule in module.modules():
        if isinstance(submodule, nn.LayerNorm):  # includes mpu.LayerNorm (PB-relax)
            no_decay["params"].extend(p for p in submodule._parameters.values() if p is not None)
            continue
        for name, param in submodule._parameters.items():
            if param is None:
                continue
            (no_decay if name == "bias" else decay)["params"].append(param)
    return decay, no_decay

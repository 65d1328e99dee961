"""CogView training: batches, loss, engines (DeepSpeed or plain torch), the loop, checkpoints and resume.

`pretrain_gpt2.py` exposes the original's functions on top of these modules:

| module | job |
|---|---|
| `distributed` | launcher environment, process groups, seeds, teardown |
| `batch` | tokens / labels / loss mask, the causal mask and position ids (finetune `[ROI2]` reset) |
| `loss` | the image/text loss split, the NaN/Inf guard's reduced losses |
| `ds_config` | reading and adapting DeepSpeed's JSON (fp16 on a CPU, torch Adam, batch checks) |
| `engine` | model, parameter groups, optimizer and LR schedule on DeepSpeed or torch + DDP |
| `step` | forward, backward and optimizer step of one iteration, evaluation |
| `report` | the iteration line, tokens/s, MFU, ETA, tensorboard scalars |
| `checkpointing` | save and resume (model, optimizer, schedule, RNG, data position) |
| `optimizer_state` | optimizer state by parameter name (resume on another data-parallel size or ZeRO stage) |
| `errors` | the error for training arguments that cannot run together |
| `timing` | timers that may be None, as the original's functions allow |
| `loop` | the training loop: logging, evaluation, saving, exit interval, new-dataset hot loading |
"""

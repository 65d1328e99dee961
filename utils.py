"""The original's ``utils`` import path: timers, rank-0 printing and checkpoint saving and loading.

They live in ``common.timers``, ``common.process_env`` and ``model.checkpoint``. The checkpoint functions
here are the model-weights ones, ``save_checkpoint(model, save_dir, iteration, client_state)`` and
``load_checkpoint(model, load_dir)``, in the released layout; the training loop's optimizer and
learning-rate state is saved by the training package.
"""

from common.process_env import print_rank_0
from common.timers import Timers
from model.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["Timers", "load_checkpoint", "print_rank_0", "save_checkpoint"]

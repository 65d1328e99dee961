"""Training the VQ-VAE image tokenizer: NN + EMA codebook, the method CogView used (section 2.2 of its paper).

Loss = mse(reconstruction, image) + beta · mse(quantized.detach(), latent), both in normalised image space;
the codebook itself follows the EMA of its assigned latents. Codes whose EMA count falls below a threshold
are restarted on random latents of the current batch (as in Jukebox), which also initialises the whole
codebook from data on the first step. Data order and restarts are pure functions of (seed, step), so a run
resumed from its saved state continues exactly as if it had never stopped.
"""

import math
import os
import signal
import sys
import threading
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.atomic_files import atomic_torch_save
from common.errors import InputError
from common.output_folders import check_writable_folder
from vqvae.checkpoint import save_vqvae
from vqvae.image_files import ImageFiles
from vqvae.images import denormalize
from vqvae.model import VQVAE

TRAIN_STATE_FORMAT = "cogview-vqvae-train-state-1"


class TrainingSetupError(InputError):
    """Inconsistent training options or files (e.g. nothing to resume, output exists, bad image size)."""


# The released tokenizer's architecture: the shape a fresh run gets for the options it leaves out.
RELEASED_SHAPE = {"channel": 512, "embed_dim": 256, "n_embed": 8192, "stride": 6}


@dataclass
class TrainConfig:
    """Options of `train` (the flags of tools/train_vqvae.py).

    Model shape options left at None take the released architecture (`RELEASED_SHAPE`) on a fresh run and
    the saved run's on resume; given on resume, they must match the saved run.
    """

    images: Path
    output: Path
    image_size: int = 256
    channel: int | None = None
    embed_dim: int | None = None
    n_embed: int | None = None
    stride: int | None = None
    batch_size: int = 8
    lr: float = 3e-4
    steps: int = 10000
    commitment_beta: float = 0.25
    dead_code_threshold: float = 0.1  # EMA assignments per step; keep well below batch·h·w / n_embed
    save_interval: int = 1000
    resume: bool = False
    device: str = "cpu"
    seed: int = 0
    workers: int = 0
    window: int = 50  # steps over which PSNR is averaged and codebook usage is counted
    progress: bool = True

    def __post_init__(self):
        self.images, self.output = Path(self.images), Path(self.output)

    def shape(self) -> dict[str, int | None]:
        """The model shape options as given (None where left out)."""
        return {name: getattr(self, name) for name in RELEASED_SHAPE}


@dataclass
class TrainResult:
    """What a `train` call did; the histories cover only the steps run by this call."""

    start_step: int
    step: int
    psnr: list[float] = field(default_factory=list)  # dB per step, de-normalised images clamped to [0, 1]
    usage: list[float] = field(default_factory=list)  # fraction of codes used in the last `window` steps
    restarted: int = 0  # dead-code restarts in total
    unreadable: dict[str, str] = field(default_factory=dict)  # image name → reason, for skipped images
    interrupted: bool = False  # stopped early by Ctrl-C (after saving the last finished step)


def train_state_path(output: str | os.PathLike) -> Path:
    """The resume sidecar next to the model file: `<output>.train-state`."""
    output = Path(output)
    return output.with_name(output.name + ".train-state")


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    """The RNG of (seed, stream, index), so data order (stream 0) and restarts (stream 1) follow the step."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) * 2 + stream)


class StepBatchSampler:
    """Batches of dataset indices for steps [start, end): epoch e is a permutation drawn from (seed, e)."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start: int, end: int):
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start, self.end = start, end
        self.per_epoch = max(n_items // batch_size, 1)

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        epoch, perm = -1, None
        for step in range(self.start, self.end):
            step_epoch, position = divmod(step, self.per_epoch)
            if step_epoch != epoch:
                epoch = step_epoch
                perm = torch.randperm(self.n_items, generator=_generator(self.seed, 0, epoch))
            yield perm[position * self.batch_size : (position + 1) * self.batch_size].tolist()


def _collate(items: list[tuple[torch.Tensor | None, str, str]]) -> tuple[torch.Tensor | None, dict[str, str]]:
    """Stack the readable images [b, 3, S, S]; return the unreadable ones as name → reason."""
    images = [image for image, _, _ in items if image is not None]
    failed = {name: error for image, name, error in items if image is None}
    return (torch.stack(images) if images else None), failed


def psnr_db(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of normalised images [b, 3, H, W], measured on de-normalised pixels clamped to [0, 1]."""
    mse = F.mse_loss(denormalize(recon).clamp(0, 1), denormalize(target).clamp(0, 1)).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def train_step(
    model: VQVAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, config: TrainConfig, step: int
) -> tuple[torch.Tensor, float, torch.Tensor, int]:
    """One update on normalised `images` [b, 3, S, S] → (loss, PSNR dB, codes used [b, h, w], restarts)."""
    out = model(images)
    loss = F.mse_loss(out.recon, images) + config.commitment_beta * out.diff
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    latents = out.latent.detach().reshape(-1, out.latent.shape[-1])  # [b*h*w, d]
    restarted = model.quantize_t.restart_dead_codes(
        latents, config.dead_code_threshold, _generator(config.seed, 1, step)
    )
    return loss.detach(), psnr_db(out.recon.detach(), images), out.ids, restarted


class _RunStats:
    """Progress-bar statistics: PSNR averaged over the last `window` steps, codebook usage in that window."""

    def __init__(self, n_embed: int, window: int, result: TrainResult):
        self.window, self.result = window, result
        self.last_used = torch.full(
            (n_embed,), -window - 1
        )  # [n_embed] step at which each code was last used
        self.recent_psnr: deque[float] = deque(maxlen=window)

    def record(
        self, step: int, loss: float, psnr: float, ids: torch.Tensor, restarted: int
    ) -> dict[str, str]:
        """Add one step (codes `ids` [b, h, w]) to the result's histories; return the progress-bar postfix."""
        self.last_used[ids.unique().cpu()] = step
        usage = (self.last_used > step - self.window).float().mean().item()
        self.recent_psnr.append(psnr)
        self.result.psnr.append(psnr)
        self.result.usage.append(usage)
        self.result.restarted += restarted
        postfix = {
            "loss": f"{loss:.4f}",
            "psnr": f"{sum(self.recent_psnr) / len(self.recent_psnr):.2f}dB",
            "usage": f"{usage:.1%}",
        }
        if self.result.unreadable:
            postfix["skipped"] = str(len(self.result.unreadable))
        return postfix


def _save(model: VQVAE, optimizer: torch.optim.Optimizer, step: int, config: TrainConfig) -> None:
    """Model in the released format, then the self-contained resume state (model, optimizer, step)."""
    save_vqvae(model, config.output)
    state = {
        "format": TRAIN_STATE_FORMAT,
        "step": step,
        "model_config": model.config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }
    atomic_torch_save(state, train_state_path(config.output))


def _check_output(output: Path) -> None:
    """Refuse an output that cannot be written before any training is done: not at the first save."""
    if output.is_dir():
        raise TrainingSetupError(f"--output {output} is a folder; name the model file to write.")
    check_writable_folder(output.parent, f"the folder of --output {output}")


def _check_shape(config: TrainConfig, saved: dict[str, int], sidecar: Path) -> None:
    """On resume, a model shape option that was given must be the saved run's."""
    for name, given in config.shape().items():
        if given is not None and given != saved[name]:
            flag = "--" + name.replace("_", "-")
            raise TrainingSetupError(
                f"Cannot resume with {flag} {given}: the run saved in {sidecar} has {flag} {saved[name]} "
                f"(leave {flag} out to keep it, or start a new run with another --output)."
            )


def _setup(config: TrainConfig) -> tuple[VQVAE, torch.optim.Optimizer, int]:
    """Build (or restore, with `resume`) the model and optimizer; return them and the step to start from."""
    if config.steps < 1:
        raise TrainingSetupError(f"--steps must be at least 1, got {config.steps}.")
    _check_output(config.output)
    sidecar = train_state_path(config.output)
    if config.resume:
        if not sidecar.is_file():
            raise TrainingSetupError(f"Cannot resume: training state {sidecar} not found.")
        try:
            state = torch.load(sidecar, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
            raise TrainingSetupError(f"Cannot resume: {sidecar} is truncated or corrupt.") from error
        if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
            raise TrainingSetupError(f"Cannot resume: {sidecar} is not a VQ-VAE training state.")
        _check_shape(config, state["model_config"], sidecar)
        if config.steps <= state["step"]:
            raise TrainingSetupError(
                f"Cannot resume: the run saved in {sidecar} is already at step {state['step']}; "
                f"pass a --steps above it (it counts the steps done)."
            )
        model = VQVAE(**state["model_config"])
        model.load_state_dict(state["model"])
        model.to(config.device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = config.lr
        return model, optimizer, int(state["step"])
    if config.output.exists():
        raise TrainingSetupError(
            f"{config.output} already exists: pass --resume to continue it, or pick another --output."
        )
    torch.manual_seed(config.seed)
    shape = {name: RELEASED_SHAPE[name] if given is None else given for name, given in config.shape().items()}
    model = VQVAE(**shape)
    model.to(config.device).train()
    return model, torch.optim.Adam(model.parameters(), lr=config.lr), 0


def _ignore_interrupts(worker_id: int) -> None:
    """Image-loading workers leave Ctrl-C to the main process, which stops at the end of a step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _StopRequest:
    """While active, the first Ctrl-C only asks the loop to stop after the current step (so the model and
    optimizer are saved consistent); a second one interrupts at once. Inactive outside the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "stopping after this step to save it; Ctrl-C again to quit without saving", file=sys.stderr
        )

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(config: TrainConfig) -> TrainResult:
    """Train (or resume training) a VQ-VAE on the images of `config.images` up to `config.steps` steps.

    Saves `config.output` (released format) and its resume sidecar every `save_interval` steps and at the end,
    and on Ctrl-C after the step under way (then returns with `interrupted` set).
    Unreadable images are skipped and counted (a warning names one of them); a batch without any readable
    image is skipped.
    """
    model, optimizer, start = _setup(config)
    if config.image_size % model.downsample_factor:
        raise TrainingSetupError(
            f"--image-size {config.image_size} is not a multiple of the down-sampling factor "
            f"{model.downsample_factor}."
        )
    dataset = ImageFiles(config.images, config.image_size)
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, start, config.steps)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_collate,
        num_workers=config.workers,
        worker_init_fn=_ignore_interrupts,
    )

    result = TrainResult(start_step=start, step=start)
    stats = _RunStats(model.n_embed, config.window, result)
    bar = tqdm(total=config.steps, initial=start, desc="vqvae", unit="step", disable=not config.progress)
    with bar, _StopRequest() as stop:
        for step, (images, failed) in enumerate(loader, start=start + 1):
            result.unreadable.update(failed)
            if len(result.unreadable) == len(dataset):
                raise TrainingSetupError(
                    f"None of the {len(dataset)} images in {config.images} could be read."
                )
            if images is not None:
                loss, psnr, ids, restarted = train_step(
                    model, optimizer, images.to(config.device), config, step
                )
                bar.set_postfix(stats.record(step, loss.item(), psnr, ids, restarted), refresh=False)
            bar.update(1)
            result.step = step
            if step % config.save_interval == 0 or step == config.steps or stop.requested:
                _save(model, optimizer, step, config)
            if stop.requested:
                result.interrupted = True
                break
    if result.unreadable:
        reason = next(iter(result.unreadable.values()))
        warnings.warn(f"Skipped {len(result.unreadable)} unreadable image(s), e.g. {reason}", stacklevel=2)
    return result

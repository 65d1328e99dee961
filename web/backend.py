"""The demo's tasks on in-memory inputs: text → images, image → captions, post-selection, super-resolution.

The sequences are the layouts of ``data_utils.layouts``, as in ``generation.tasks``, but a client's text
never goes through ``UnifiedTokenizer.parse_query``: in the query language ``[Image]path`` opens a file on
the server and ``[SEP]`` is a command. Text is encoded with ``EncodeAsIds`` (text ids only) and images
arrive as tensors decoded from the upload, so no client-supplied string ever names a file.

Every method here runs on the worker thread that owns the models (``web.jobs``). Each reports through a
:class:`Reporter`: ``progress(done, total)`` after every sampling step (it raises to cancel the work) and
``image(index, png, **details)`` as soon as an image is ready.

text2image's quality levers are those of ``generate_samples.py --post-select K --guidance-scale S``:
the query guidance runs beside and the choice among candidates come from ``generation.tasks.text2image``
(``guidance_query``, ``select_candidates``), and guidance itself from ``filling_sequence``.
"""

import argparse
import dataclasses
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from common.errors import InputError
from data_utils import UnifiedTokenizer, layouts
from data_utils.layouts import MASK
from data_utils.unified_tokenizer import QueryError
from generation.filling import batch_chunks, filling_sequence
from generation.magnify import magnify
from generation.sampling import SamplingConfig
from generation.scoring import inverse_prompt_score, score_in_batches
from generation.tasks.base import code_grid_side
from generation.tasks.image2text import CAPTION_LENGTH
from generation.tasks.text2image import guidance_query, select_candidates
from model import GPT2Model
from vqvae import to_pil


class Reporter(Protocol):
    """Where a task sends its progress and its images (``web.jobs.Job``); ``details`` go with the image."""

    def progress(self, done: int, total: int) -> None: ...

    def image(self, index: int, png: bytes, **details: Any) -> None: ...


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``temperature``, ``top_k`` (0 = off) and ``seed`` (None = a fresh random one).

    ``post_select`` (candidates drawn per kept image) and ``guidance_scale`` (classifier-free guidance) are
    text2image's quality levers, 1 = off for both; :attr:`Backend.options` says which this backend has.
    """

    temperature: float
    top_k: int
    seed: int | None = None
    post_select: int = 1
    guidance_scale: float = 1.0


@dataclass(frozen=True)
class Models:
    """One loaded copy of each model; a role whose model is not loaded is None (its endpoint says so).

    ``args``: the model arguments each extra model (``caption``, ``super_resolution``) was built with, its
    own where ``web.server`` was given ``--caption-model-args`` or ``--sr-model-args``; a role not named
    here was built with the backend's arguments. ``scorers``: the models text2image's post-selection sums
    the scores of, as ``generate_samples.py --post-select-load`` does; empty: the caption model scores.
    """

    base: GPT2Model
    caption: GPT2Model | None = None
    super_resolution: GPT2Model | None = None
    args: Mapping[str, argparse.Namespace] = field(default_factory=dict)
    scorers: tuple[GPT2Model, ...] = ()  # text2image's --post-select-load models (base architecture)


def png_bytes(image: torch.Tensor) -> bytes:
    """A decoded image ``[1, 3, H, W]`` (nominal [0, 1], clamped) → PNG file contents."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def positions_of(model: GPT2Model) -> int:
    """How many positions the model has (its longest sequence)."""
    return model.transformer.position_embeddings.num_embeddings


class Backend:
    """The models, the tokenizer and the base arguments, and the tasks the demo offers on them.

    ``args`` supplies what is not per request (``max_inference_batch_size``, ``top_p``); ``image_size``
    the side of the generated images (256 for the released VQ-VAE).
    """

    def __init__(
        self, models: Models, tokenizer: UnifiedTokenizer, args: argparse.Namespace, image_size: int
    ):
        self.models = models
        self.tokenizer = tokenizer
        self.args = args
        self.image_size = image_size
        self.grid_side = code_grid_side(tokenizer, image_size)
        self.num_codes = self.grid_side**2
        self.device = models.base.word_embeddings.weight.device

    @property
    def tasks(self) -> dict[str, bool]:
        """Which endpoints have their model loaded."""
        return {
            "text2image": True,
            "image2text": self.models.caption is not None,
            "post-selection": self.models.caption is not None,
            "super-resolution": self.models.super_resolution is not None and self._has_sr_windows(),
        }

    @property
    def options(self) -> dict[str, bool]:
        """Which :class:`Sampling` quality levers text2image offers here.

        Post-selection scores candidates with the scorers or the caption model, so it needs one loaded;
        guidance needs only the base model (it helps only one trained with ``--caption-dropout``).
        """
        can_score = bool(self.models.scorers) or self.models.caption is not None
        return {"post_select": can_score, "guidance_scale": True}

    # --- checks done before a request is queued (cheap: tokenising only) -----------------------------

    def text_ids(self, text: str) -> list[int]:
        """The text ids of ``text`` (never command ids); an empty text is refused."""
        ids = self.tokenizer.EncodeAsIds(text.strip())
        if not ids:
            raise QueryError("the text is empty")
        return ids

    def text2image_ids(self, prompt: str) -> list[int]:
        """The text2image layout, one −1 per code and no ``[EOI1]``, checked against the positions."""
        ids = layouts.text2image(
            self.tokenizer, self.text_ids(prompt), [MASK] * self.num_codes, end_image=False
        )
        self._check_fits(len(ids), self.models.base, "prompt")
        return ids

    def check_caption(self, caption: str) -> list[int]:
        """The text ids of a caption to score images against, checked against the caption model's
        positions."""
        return self._checked_text(caption, [self._model("caption")], "caption")

    def check_scored_prompt(self, prompt: str) -> list[int]:
        """The text ids of a text2image prompt that post-selection scores candidates against, checked
        against each scorer's positions."""
        return self._checked_text(prompt, [model for model, _ in self._scorers()], "prompt")

    def check_super_resolution_prompt(self, prompt: str) -> list[int]:
        """The super-resolution prefix ``[ROI1] text [size] [BOI1]``, checked against its longest window."""
        ids = layouts.super_resolution_prefix(self.tokenizer, self.text_ids(prompt), self.grid_side)
        longest = len(ids) + self.num_codes // 4 + len(layouts.SR_MIDFIX) + self.num_codes
        self._check_fits(longest, self._model("super_resolution"), "prompt", finetune=True)
        return ids

    # --- the tasks (worker thread) -------------------------------------------------------------------

    def text2image(
        self,
        ids: Sequence[int],
        count: int,
        sampling: Sampling,
        report: Reporter,
        caption_ids: Sequence[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Sample ``count`` images for the ``text2image_ids``; each is reported as soon as it is decided.

        Samples come in forwards of at most ``--max-inference-batch-size``, all drawn from one generator in
        order, so they are the images of the text2image task at ``--batch-size count`` (and the same
        ``--post-select``, ``--guidance-scale``) with the same seed. With post-select K, ``count·K``
        candidates are drawn; as soon as the K of an image are there, the scorers score them against
        ``caption_ids`` (the prompt's text ids, :meth:`check_scored_prompt`) and the best is reported, with
        ``candidate`` (0-based) and ``score``. Progress counts the tokens of every candidate. Returns those
        details of each image (an empty list without post-selection).
        """
        k = sampling.post_select
        if k > 1 and caption_ids is None:
            raise ValueError("post-selection needs the caption's text ids")
        generator = self._generator(sampling)
        unconditional = guidance_query(self.tokenizer, ids, sampling.guidance_scale)
        chunks = batch_chunks(count * k, self.args.max_inference_batch_size)
        total, done = count * k * self.num_codes, 0
        drawn: list[torch.Tensor] = []  # candidates of the images not reported yet
        kept: list[dict[str, Any]] = []  # what post-selection kept for each image reported
        index = 0  # of the next image
        for size in chunks:
            drawn += filling_sequence(
                self.models.base,
                ids,
                self._sampling_args(sampling, size),
                tokenizer=self.tokenizer,
                generator=generator,
                guidance_scale=sampling.guidance_scale,
                unconditional=unconditional,
                on_step=lambda step, _chunk_total, before=done: report.progress(before + step, total),
            )
            done += size * self.num_codes
            while len(drawn) >= k:
                group, drawn = torch.stack(drawn[:k]), drawn[k:]
                row, details = group[0], {}
                if k > 1:
                    selection = select_candidates(
                        group, caption_ids, k, self.tokenizer, self.num_codes, self._caption_scores
                    )
                    row = selection.kept[0]
                    details = {"candidate": selection.picks[0], "score": selection.scores[0]}
                    kept.append(details)
                codes = row[-self.num_codes :]
                report.image(index, png_bytes(self.tokenizer.img_tokenizer.DecodeIds(codes)), **details)
                index += 1
        return kept

    def image2text(self, image: torch.Tensor, count: int, sampling: Sampling, report: Reporter) -> list[str]:
        """``count`` captions of a normalised image ``[1, 3, S, S]``, 20 text tokens each (the original's)."""
        model = self._model("caption")
        ids = layouts.image2text(self.tokenizer, self._encode(image), [MASK] * CAPTION_LENGTH)
        self._check_fits(len(ids), model, "image")
        filled = filling_sequence(
            model,
            ids,
            self._sampling_args(sampling, count),
            tokenizer=self.tokenizer,
            generator=self._generator(sampling),
            on_step=report.progress,
        )
        start = len(ids) - CAPTION_LENGTH
        return [" ".join("".join(self.tokenizer.DecodeIds(row[start:])[0]).split()) for row in filled]

    def post_selection(
        self, caption_ids: Sequence[int], images: Sequence[torch.Tensor], report: Reporter
    ) -> list[float]:
        """The score of each image for the caption (log-likelihood of the caption given the image)."""
        model = self._model("caption")
        rows = [layouts.image2text(self.tokenizer, self._encode(image), caption_ids) for image in images]
        step = self.args.max_inference_batch_size
        scores: list[float] = []
        for start in range(0, len(rows), step):
            batch = rows[start : start + step]
            multiple = self._args("caption").make_vocab_size_divisible_by
            scores += inverse_prompt_score(model, batch, self.tokenizer, multiple).tolist()
            report.progress(len(scores), len(rows))
        return scores

    def super_resolution(
        self, prompt_ids: Sequence[int], image: torch.Tensor, sampling: Sampling, report: Reporter
    ) -> None:
        """Draw the normalised image ``[1, 3, S, S]`` at twice its side, guided by the prompt; one image."""
        high = magnify(
            self._model("super_resolution"),
            self.tokenizer,
            self._encode(image),
            prompt_ids,
            self._sampling_args(sampling, 1),
            generator=self._generator(sampling),
            on_step=report.progress,
        )
        report.image(0, png_bytes(self.tokenizer.img_tokenizer.DecodeIds(high)))

    # --- helpers -------------------------------------------------------------------------------------

    def _has_sr_windows(self) -> bool:
        try:
            layouts.check_super_resolution_side(self.grid_side)
        except InputError:
            return False
        return True

    def _scorers(self) -> list[tuple[GPT2Model, int]]:
        """text2image's post-selection scorers, each with its vocabulary's padding multiple: the
        ``--post-select-load`` models (base architecture), else the caption model."""
        if self.models.scorers:
            return [(model, self.args.make_vocab_size_divisible_by) for model in self.models.scorers]
        return [(self._model("caption"), self._args("caption").make_vocab_size_divisible_by)]

    def _caption_scores(self, rows: list[list[int]]) -> torch.Tensor:
        """Post-selection scores of image2text ``rows``: the sum of the scorers', as the text2image task's."""
        batch = self.args.max_inference_batch_size
        scores = [
            score_in_batches(model, rows, self.tokenizer, batch, multiple)
            for model, multiple in self._scorers()
        ]
        return torch.stack(scores).sum(dim=0)

    def _checked_text(self, text: str, models: Sequence[GPT2Model], what: str) -> list[int]:
        """The text ids of ``text``, checked to fit each of ``models`` in the image2text layout."""
        ids = self.text_ids(text)
        length = layouts.non_text_length(layouts.IMAGE2TEXT, self.grid_side) + len(ids)
        for model in models:
            self._check_fits(length, model, what)
        return ids

    def _model(self, role: str) -> GPT2Model:
        model = getattr(self.models, role)
        if model is None:
            raise QueryError(f"this server has no {role.replace('_', '-')} model loaded")
        return model

    def _args(self, role: str) -> argparse.Namespace:
        """The model arguments ``role``'s model was built with."""
        return self.models.args.get(role, self.args)

    def _encode(self, image: torch.Tensor) -> torch.Tensor:
        """A normalised image ``[1, 3, S, S]`` → its codes ``[S/f * S/f]`` on the CPU."""
        return self.tokenizer(image.to(self.tokenizer.device))[0].cpu()

    def _check_fits(self, length: int, model: GPT2Model, what: str, finetune: bool = False) -> None:
        limit = positions_of(model)
        if finetune:  # super-resolution windows restart their positions after [ROI2]
            limit = max(limit, self._args("super_resolution").max_position_embeddings_finetune)
        if length > limit:
            raise QueryError(
                f"the {what} makes a sequence of {length} tokens but the model takes at most {limit}; "
                "shorten the text"
            )

    def _sampling_args(self, sampling: Sampling, batch_size: int) -> SamplingConfig:
        return dataclasses.replace(
            SamplingConfig.of(self.args),
            batch_size=batch_size,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
        )

    def _generator(self, sampling: Sampling) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        return generator

"""What every task shares: the context a query runs in, the result it hands back, and the task record.

Sizes come from the loaded models instead of the original's constants, so small models work too: the
code grid is ``image_size / downsampling`` of the VQ-VAE (256 / 8 = 32×32 = 1024 codes and ``[BASE]``
for the released one; a ×32 VQ-VAE gives 8×8 = 64 codes and ``[TINY]``), and the query limit is
``max(--max-position-embeddings, --max-position-embeddings-finetune)``.
"""

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch

from common.errors import InputError
from data_utils import UnifiedTokenizer
from data_utils.layouts import SIZE_TOKENS
from data_utils.unified_tokenizer import QueryError, QueryTooLongError, as_int_list
from generation.filling import filling_sequence
from generation.sampling import SamplingConfig
from generation.scoring import score_in_batches
from model import GPT2Model

DEFAULT_IMAGE_SIZE = 256
Decoded = tuple[list[str], list[torch.Tensor]]  # DecodeIds: (text and command segments, images)


def code_grid_side(tokenizer: UnifiedTokenizer, image_size: int = DEFAULT_IMAGE_SIZE) -> int:
    """Side of the code grid the VQ-VAE makes of an ``image_size``² image; it needs a size token.

    The side must also be even (low-level super-resolution reads images at half the size).
    """
    factor = tokenizer.img_tokenizer.downsample_factor
    side = image_size // factor
    if image_size % factor or side not in SIZE_TOKENS or side % 2:
        raise InputError(
            f"the VQ-VAE turns {image_size}² px images into a {image_size / factor:g}² grid, "
            f"but CogView has size tokens only for {', '.join(f'{s}×{s}' for s in SIZE_TOKENS)} grids"
        )
    return side


@dataclass
class QueryResult:
    """What one query produced, for the runner to save and print.

    ``samples``: the final image of each sample, ``[1, 3, H, W]`` (saved as ``{i}.jpg`` and ``concat.jpg``);
    ``debug_images``: every decoded image of every sample (the ``--debug`` grid); ``line``: this query's
    line in the task's results file (captions, scores); ``report``: lines to print.
    """

    samples: list[torch.Tensor] = field(default_factory=list)
    debug_images: list[torch.Tensor] = field(default_factory=list)
    line: str | None = None
    report: list[str] = field(default_factory=list)


@dataclass
class TaskContext:
    """The model, tokenizer and arguments a query runs with, and the helpers every task uses.

    ``args`` supplies the sampling settings, read once into :attr:`sampling`, and the length limits.
    ``generator`` makes sampling reproducible; ``progress`` shows a bar over generated tokens. The quality
    levers of text2image: ``guidance_scale`` (classifier-free guidance, 1 = off), ``post_select``
    (candidates drawn per image, 1 = off) and ``caption_models``, the image → text models that score them
    and post-selection's images, each candidate by the sum of their scores (empty: ``model``, trained on
    both layouts).
    """

    model: GPT2Model
    tokenizer: UnifiedTokenizer
    args: argparse.Namespace
    image_size: int = DEFAULT_IMAGE_SIZE
    generator: torch.Generator | None = None
    progress: bool = False
    guidance_scale: float = 1.0
    post_select: int = 1
    caption_models: tuple[GPT2Model, ...] = ()
    grid_side: int = field(init=False)
    sampling: SamplingConfig = field(init=False)

    def __post_init__(self) -> None:
        self.grid_side = code_grid_side(self.tokenizer, self.image_size)
        self.sampling = SamplingConfig.of(self.args)

    @property
    def num_codes(self) -> int:
        """Codes of one image (1024 for the released VQ-VAE)."""
        return self.grid_side**2

    @property
    def max_length(self) -> int:
        """The longest query the model takes: ``max(--max-position-embeddings, ...-finetune)``."""
        return max(self.args.max_position_embeddings, self.args.max_position_embeddings_finetune)

    def too_long(self, length: int, at_least: bool = False) -> QueryError:
        """The error for a sequence of ``length`` tokens (``at_least``: a lower bound), over the limit."""
        return QueryError(
            f"the query is {'at least ' * at_least}{length} tokens long, but the model takes at most "
            f"{self.max_length} (--max-position-embeddings, --max-position-embeddings-finetune); "
            "shorten the text"
        )

    def check_length(self, length: int) -> None:
        """Refuse a sequence longer than :attr:`max_length` with one clear sentence."""
        if length > self.max_length:
            raise self.too_long(length)

    def parse(self, query: str, img_size: int | None = None) -> list[int]:
        """``tokenizer.parse_query`` (images read at ``img_size``, default ``image_size``), length-checked.

        A query too long for the model is refused while it is parsed, before its ``[MASK]*N`` is allocated.
        """
        ids = self._parse_bounded(query, img_size or self.image_size)
        self.check_length(len(ids))
        return ids

    def text_ids(self, text: str) -> list[int]:
        """The ids of a query's text field; as in the original's query strings, command names in it count.

        A ``[MASK]*N`` in it that could never fit the model is refused before it is allocated.
        """
        return self._parse_bounded(text, self.image_size)

    def _parse_bounded(self, query: str, img_size: int) -> list[int]:
        try:
            return self.tokenizer.parse_query(query, img_size=img_size, max_length=self.max_length)
        except QueryTooLongError as error:
            raise self.too_long(error.length, at_least=True) from None

    def image_codes(self, path: str, img_size: int | None = None) -> list[int]:
        """The VQ-VAE codes of the image at ``path`` read at ``img_size`` (default ``image_size``) pixels."""
        image = self.tokenizer.read_img(path, img_size or self.image_size)
        return as_int_list(self.tokenizer(image)[0])

    def fill(
        self, ids: Sequence[int], batch_size: int | None = None, unconditional: Sequence[int] | None = None
    ) -> torch.Tensor:
        """``batch_size`` (default ``--batch-size``) samples completing the −1 positions of ``ids``.

        Returns ``[b, len(ids)]``. With ``unconditional`` (the same query without its caption) the samples
        follow classifier-free guidance at ``guidance_scale``. A sequence longer than the model takes is
        refused first (:meth:`check_length`).
        """
        self.check_length(len(ids))
        sampling = self.sampling if batch_size is None else replace(self.sampling, batch_size=batch_size)
        return filling_sequence(
            self.model,
            ids,
            sampling,
            tokenizer=self.tokenizer,
            generator=self.generator,
            progress=self.progress,
            guidance_scale=self.guidance_scale if unconditional is not None else 1.0,
            unconditional=unconditional,
        )

    def score(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Post-selection scores ``[len(rows)]`` of image2text ``rows``: the sum of each caption model's.

        A sum of log-likelihoods, i.e. the product of the models' caption probabilities: a candidate ranks
        high only if every model reads the caption from it.
        """
        scores = [
            score_in_batches(
                model,
                rows,
                self.tokenizer,
                self.sampling.max_inference_batch_size,
                self.args.make_vocab_size_divisible_by,
            )
            for model in self.caption_models or (self.model,)
        ]
        return torch.stack(scores).sum(dim=0)

    def unknown_words_notice(self, text: str) -> list[str]:
        """One line naming the words of ``text`` the text tokenizer does not know; empty when there are none.

        Such words become ``<unk>``: the query still runs, but the model cannot draw what they name.
        """
        words = self.tokenizer.unknown_words(text)
        if not words:
            return []
        quoted = ", ".join(f"'{word}'" for word in words)
        return [f"notice: the model does not know {quoted} (read as <unk>); the rest of the prompt is used"]

    def decode(self, samples: torch.Tensor) -> list[Decoded]:
        """``tokenizer.DecodeIds`` of each sample ``[b, L]``: its text and command segments and its images."""
        return [self.tokenizer.DecodeIds(sample) for sample in samples]

    def decode_images(self, samples: torch.Tensor) -> QueryResult:
        """Decode samples ``[b, L]`` into a result of their images (the decoded text printed with --debug)."""
        return images_result(self.decode(samples), report=self.args.debug)


def images_result(decoded: Sequence[Decoded], report: bool = False) -> QueryResult:
    """The result of decoded samples: each sample's last image is its result; all go to the debug grid.

    With ``report`` each sample's segments are printed, space-separated.
    """
    result = QueryResult()
    for segments, images in decoded:
        if images:
            result.samples.append(images[-1])
            result.debug_images.extend(images)
        if report:
            result.report.append(" ".join(segments))
    return result


@dataclass(frozen=True)
class Task:
    """One ``--generation-task``: the TAB fields of its query lines and the function that runs a query.

    ``repeat_last``: the last field may repeat (post-selection's candidate images). ``results_file``:
    the file under ``--output-path`` that collects :attr:`QueryResult.line`, aligned with the input.
    """

    name: str
    fields: tuple[str, ...]
    run: Callable[[TaskContext, list[str]], QueryResult]
    repeat_last: bool = False
    results_file: str | None = None

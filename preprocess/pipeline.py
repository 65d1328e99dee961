"""Image-caption pairs → a token dataset (LMDB or compact `.bin`), batched, resumable and deterministic.

Samples are processed in input order, `batch_size` at a time: images are read and resized (optionally in
DataLoader workers), encoded by the VQ-VAE in one batch on `device`, laid out as rows (see
`preprocess.layouts`), and committed together with the progress state (see `data_utils.dataset_writers`).
An interrupted run (Ctrl-C, kill -9, power loss) rerun with the same settings continues after the last commit
and ends with the same rows, in the same order, as an uninterrupted one. Images that cannot be read are
skipped and listed, with the reason, in `<output>.skipped.tsv`.
"""

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import vqvae
from common.atomic_files import atomic_write_text
from common.errors import InputError, MissingInputError
from data_utils import layouts
from data_utils.dataset_writers import BinaryWriter, LMDBWriter, binary_row
from data_utils.datasets import BINARY_TEXT_LENGTH
from data_utils.layouts import LAYOUTS, check_codes_per_side, non_text_length
from data_utils.unified_tokenizer import UnifiedTokenizer
from preprocess.sources import FolderImages, Record, ZipImages, read_captions, zip_records

REPORT_HEADER = "origin\timage\treason"
# The released models' sequence lengths (--max-position-embeddings; the SR model's finetuning length).
DEFAULT_MAX_SEQ_LEN = {layouts.TEXT2IMAGE: 1089, layouts.IMAGE2TEXT: 1089, layouts.SUPER_RESOLUTION: 1345}


class SettingsMismatchError(InputError):
    """A partial output was started with different settings than this run's."""


@dataclass
class PreprocessConfig:
    """What to read, how to tokenise it and where to write it (see `preprocess_entry.py --help`)."""

    output: Path
    img_tokenizer_path: Path
    captions: Path | None = None
    image_root: Path | None = None
    zip_path: Path | None = None
    layout: str = layouts.TEXT2IMAGE
    txt_tokenizer_path: Path | None = None
    encode_size: int = 32
    max_seq_len: int | None = None
    batch_size: int = 8
    num_workers: int = 0
    device: str | int | None = None
    overwrite: bool = False


@dataclass
class PreprocessSummary:
    """What a run produced."""

    output: Path
    rows: int
    images: int
    skipped: int
    truncated_captions: int
    report: Path | None
    seconds: float


def report_path(output: Path) -> Path:
    """Where the skipped images of `output` are listed."""
    return output.with_name(output.name + ".skipped.tsv")


class ImageReader(Dataset):
    """Record i → (its normalised images, one per size, or None; the reason it could not be read, or None)."""

    def __init__(self, records: list[Record], source: FolderImages | ZipImages, sizes: tuple[int, ...]):
        self.records = records
        self.source = source
        self.sizes = sizes

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor] | None, str | None]:
        record = self.records[index]
        try:
            with self.source.open(record) as image:
                return [vqvae.image_to_tensor(image, size, name=record.image)[0] for size in self.sizes], None
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            reason = f"{type(error).__name__}: {error}"
            return None, " ".join(reason.split())


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _records_digest(records: list[Record]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.image, record.caption]).encode("utf-8"))
    return digest.hexdigest()


class Preprocessor:
    """One preprocessing run: the constructor checks all it can up front, `run()` does the work."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        if config.layout not in LAYOUTS:
            raise InputError(f"Unknown layout {config.layout!r}; choose one of {', '.join(LAYOUTS)}.")
        check_codes_per_side(config.layout, config.encode_size)
        if config.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {config.batch_size}.")
        self.binary = config.output.suffix == ".bin"
        if self.binary and (config.layout != layouts.TEXT2IMAGE or config.encode_size != 32):
            raise InputError(
                "A .bin output holds the compact text2image format (32×32 codes); write an LMDB directory "
                f"for --layout {config.layout} --encode-size {config.encode_size}."
            )
        self.records, self.source = self._inputs()
        self.tokenizer = UnifiedTokenizer(
            config.img_tokenizer_path, device=config.device, txt_tokenizer_path=config.txt_tokenizer_path
        )
        self.image_size = config.encode_size * self.tokenizer.img_tokenizer.downsample_factor
        max_seq_len = config.max_seq_len or DEFAULT_MAX_SEQ_LEN[config.layout]
        self.max_text = max_seq_len - non_text_length(config.layout, config.encode_size)
        if self.binary:
            self.max_text = min(self.max_text, BINARY_TEXT_LENGTH)
        if self.max_text < 1:
            raise InputError(
                f"A {config.layout} row with {config.encode_size}² codes does not fit "
                f"--max-seq-len {max_seq_len}."
            )
        self.settings = {
            "layout": config.layout,
            "encode_size": config.encode_size,
            "max_text": self.max_text,
            "records": _records_digest(self.records),
            "img_tokenizer": _file_digest(Path(config.img_tokenizer_path)),
            "txt_tokenizer": _file_digest(self.tokenizer.txt_tokenizer.path),
        }

    def _inputs(self) -> tuple[list[Record], FolderImages | ZipImages]:
        config = self.config
        if config.zip_path is not None:
            if config.image_root is not None:
                raise InputError("Give either a zip of images or an image root, not both.")
            source = ZipImages(config.zip_path)
            records = read_captions(config.captions) if config.captions else zip_records(config.zip_path)
            return records, source
        if config.captions is None:
            raise InputError("Give a captions file (with an image root) or a zip of images.")
        root = config.image_root if config.image_root is not None else Path(config.captions).parent
        if not Path(root).is_dir():
            raise MissingInputError(f"Image root {root} is not a directory.")
        return read_captions(config.captions), FolderImages(root)

    def _open_writer(self) -> LMDBWriter | BinaryWriter:
        output, overwrite = self.config.output, self.config.overwrite
        writer = (
            BinaryWriter(output, overwrite=overwrite)
            if self.binary
            else LMDBWriter(output, overwrite=overwrite)
        )
        if overwrite:
            report_path(output).unlink(missing_ok=True)
        if writer.state is not None and writer.state["settings"] != self.settings:
            changed = sorted(k for k in self.settings if writer.state["settings"].get(k) != self.settings[k])
            writer.close()
            raise SettingsMismatchError(
                f"{writer.partial} was started with different {', '.join(changed)}; rerun with the original "
                "settings to resume it, or pass --overwrite to start over."
            )
        return writer

    def _rows(self, caption: str, codes: list[np.ndarray]) -> tuple[list[np.ndarray], bool]:
        """Rows for one encoded image, and whether its caption was cut to fit."""
        text_ids = self.tokenizer(caption)
        truncated = len(text_ids) > self.max_text
        text_ids = text_ids[: self.max_text]
        layout = self.config.layout
        if self.binary:
            return [binary_row(text_ids, codes[0])], truncated
        if layout == layouts.TEXT2IMAGE:
            rows = [layouts.text2image(self.tokenizer, text_ids, codes[0])]
        elif layout == layouts.IMAGE2TEXT:
            rows = [layouts.image2text(self.tokenizer, codes[0], text_ids)]
        else:
            rows = layouts.super_resolution_rows(self.tokenizer, text_ids, codes[0], codes[1])
        return [np.asarray(row, dtype=np.int64) for row in rows], truncated

    def run(self, on_commit: Callable[[int], None] | None = None) -> PreprocessSummary:
        """Process every record not yet committed, finish the output, and summarise.

        `on_commit(consumed)` is called after each committed batch with the number of records done so far.
        """
        start = time.perf_counter()
        report = report_path(self.config.output)
        writer = self._open_writer()
        try:
            if writer.complete:  # an earlier run stopped inside writer.finish(), after writing the report
                state = writer.state or self._state_from_report(report)
            else:
                fresh = {"settings": self.settings, "consumed": 0, "skipped": 0, "truncated": 0}
                state = self._process(writer, writer.state or fresh, on_commit)
                self._write_report(report, writer.log_lines())
            writer.finish()
        finally:
            writer.close()
        return PreprocessSummary(
            output=self.config.output,
            rows=writer.num_rows,
            images=state["consumed"] - state["skipped"],
            skipped=state["skipped"],
            truncated_captions=state["truncated"],
            report=report if state["skipped"] else None,
            seconds=time.perf_counter() - start,
        )

    @staticmethod
    def _write_report(report: Path, lines: list[str]) -> None:
        """Replace `report` by the header and `lines`, or remove it when there are none."""
        if not lines:
            report.unlink(missing_ok=True)
            return
        atomic_write_text(report, "\n".join([REPORT_HEADER, *lines]) + "\n")

    def _state_from_report(self, report: Path) -> dict:
        """Counts of a run whose LMDB was finished but not yet renamed (its progress keys are gone)."""
        skipped = len(report.read_text(encoding="utf-8").splitlines()) - 1 if report.exists() else 0
        return {"consumed": len(self.records), "skipped": skipped, "truncated": 0}

    def _process(
        self, writer: LMDBWriter | BinaryWriter, state: dict, on_commit: Callable[[int], None] | None
    ) -> dict:
        sizes = (
            (self.image_size, 2 * self.image_size)
            if self.config.layout == "super-resolution"
            else (self.image_size,)
        )
        todo = self.records[state["consumed"] :]
        loader = DataLoader(
            ImageReader(todo, self.source, sizes),
            batch_size=self.config.batch_size,
            num_workers=self.config.num_workers,
            collate_fn=list,
        )
        progress = tqdm(total=len(self.records), initial=state["consumed"], unit="img", desc="preprocess")
        with progress:
            offset = state["consumed"]
            for batch in loader:
                records = self.records[offset : offset + len(batch)]
                state = self._commit_batch(writer, state, records, batch)
                offset = state["consumed"]
                progress.update(len(batch))
                if on_commit is not None:
                    on_commit(offset)
        return state

    def _commit_batch(
        self,
        writer: LMDBWriter | BinaryWriter,
        state: dict,
        records: list[Record],
        batch: list[tuple[list[torch.Tensor] | None, str | None]],
    ) -> dict:
        good = [
            (record, images) for record, (images, _) in zip(records, batch, strict=True) if images is not None
        ]
        codes_per_size: list[np.ndarray] = []
        if good:
            for k in range(len(good[0][1])):
                images = torch.stack([images[k] for _, images in good])  # [b, 3, S_k, S_k]
                codes_per_size.append(self.tokenizer(images).cpu().numpy())  # [b, (S_k / f)²]
        rows: list[np.ndarray] = []
        truncated = 0
        for i, (record, _) in enumerate(good):
            record_rows, cut = self._rows(record.caption, [codes[i] for codes in codes_per_size])
            rows.extend(record_rows)
            truncated += cut
        log = [
            f"{record.origin}\t{record.image}\t{reason}"
            for record, (_, reason) in zip(records, batch, strict=True)
            if reason is not None
        ]
        state = {
            **state,
            "consumed": state["consumed"] + len(records),
            "skipped": state["skipped"] + len(log),
            "truncated": state["truncated"] + truncated,
        }
        writer.commit(rows, state, log)
        return state


def summary_text(summary: PreprocessSummary) -> str:
    """A one-paragraph account of a run for the terminal."""
    text = (
        f"Wrote {summary.rows} rows from {summary.images} images to {summary.output} "
        f"in {summary.seconds:.1f} s."
    )
    if summary.truncated_captions:
        text += f" {summary.truncated_captions} captions were cut to fit the sequence length."
    if summary.report is not None:
        text += f" Skipped {summary.skipped} unreadable images, listed in {summary.report}."
    return text

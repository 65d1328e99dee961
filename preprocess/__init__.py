"""The preprocessing tool: image-caption pairs → token datasets for training (run `preprocess_entry.py`)."""

from data_utils.layouts import LAYOUTS
from preprocess.pipeline import PreprocessConfig, Preprocessor, PreprocessSummary, summary_text
from preprocess.sources import CaptionFileError, Record, read_captions, zip_records

__all__ = [
    "LAYOUTS",
    "CaptionFileError",
    "PreprocessConfig",
    "PreprocessSummary",
    "Preprocessor",
    "Record",
    "read_captions",
    "summary_text",
    "zip_records",
]

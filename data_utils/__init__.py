"""Tokenizers, sequence templates, token datasets and loaders (the original `data_utils` names)."""

from data_utils.configure_data import build_loaders, detect_new_datasets, make_dataset, make_loaders
from data_utils.dataset_writers import BinaryWriter, LMDBWriter, write_binary, write_lmdb
from data_utils.datasets import BinaryDataset, LMDBDataset, get_dataset_by_type
from data_utils.templates import Code2CodeTemplate, PureTextTemplate, TextCodeTemplate, concat_codes
from data_utils.unified_tokenizer import COMMAND_TOKENS, UnifiedTokenizer, get_tokenizer

__all__ = [
    "COMMAND_TOKENS",
    "BinaryDataset",
    "BinaryWriter",
    "Code2CodeTemplate",
    "LMDBDataset",
    "LMDBWriter",
    "PureTextTemplate",
    "TextCodeTemplate",
    "UnifiedTokenizer",
    "build_loaders",
    "concat_codes",
    "detect_new_datasets",
    "get_dataset_by_type",
    "get_tokenizer",
    "make_dataset",
    "make_loaders",
    "write_binary",
    "write_lmdb",
]

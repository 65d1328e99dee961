"""The bundled demo: colourised animal silhouettes with bilingual captions, their tokenizers and scorer.

Modules: `vocabulary` (palette and animal names), `captions` (caption text both ways), `silhouettes`
(the animal-mnist source and its train/test split), `composition` (drawing one scene), `dataset_builder`
(a split's images and captions in the preprocessing tool's input format), `text_tokenizer` (the small
SentencePiece model), `evaluation` (scoring an image against its caption from the pixels) and
`classifier` (the animal classifier the scorer uses).
"""

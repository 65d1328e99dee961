"""Where the repository and its bundled or downloaded files live, so that no module spells them again.

Paths are absolute (from this file's location), so scripts work from any working directory.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PRETRAINED = REPO_ROOT / "pretrained"
DEFAULT_TXT_TOKENIZER_PATH = PRETRAINED / "chinese_sentencepiece" / "cog-pretrain.model"
DEFAULT_VQVAE_PATH = PRETRAINED / "vqvae" / "vqvae_hard_biggerset_011.pt"
# The bundled demo models (rebuilt by scripts/train_demo.sh).
DEMO_DIR = PRETRAINED / "demo"
DEMO_TXT_TOKENIZER_PATH = DEMO_DIR / "demo_text.model"
DEMO_VQVAE_PATH = DEMO_DIR / "vqvae_demo.pt"
DEMO_CLASSIFIER_PATH = DEMO_DIR / "animal_classifier.pt"
# The released model folders, as a hint in error messages (relative: that is how users type them).
RELEASED_CHECKPOINTS_HINT = "pretrained/cogview/cogview-{base,sr,caption}/"
RELEASED_VQVAE_HINT = DEFAULT_VQVAE_PATH.relative_to(REPO_ROOT).as_posix()

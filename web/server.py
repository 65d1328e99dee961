"""``python -m web.server``: load the models once and serve the page and the API (``scripts/web_demo.sh``).

The model arguments are ``generate_samples.py``'s (``--load``, ``--img-tokenizer-path``, the sizes,
``--device``, ``--fp16`` ...): ``--load`` is the text → image model; ``--load-caption`` (image2text and
post-selection) and ``--load-sr`` (super-resolution) are optional. Each extra model is built with those
arguments, or with its own architecture: ``--caption-model-args`` and ``--sr-model-args`` take model
arguments (``--num-layers``, ``--hidden-size``, ``--max-position-embeddings-finetune`` ...) parsed on top of
the others for that model only; the tokenizer, the image size and the sampling settings stay shared. A
folder given for several roles with the same architecture is loaded once. The web arguments below come
first in ``--help``. It binds to 127.0.0.1 unless ``--host`` says otherwise, prints the URL, and stops on
Ctrl-C. Exit status 2: it could not start (one line says why).
"""

import argparse
import contextlib
import io
import logging
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import uvicorn

from arguments import get_args, model_argument_names
from common.errors import InputError, MissingInputError
from common.model_sources import WEB_ROLES
from generation.runtime import (
    build_model,
    build_tokenizer,
    check_weights,
    init_device,
    model_dtype,
    set_random_seed,
)
from generation.tasks.base import code_grid_side
from model.checkpoint import CheckpointNotFoundError, read_tracker
from web.app import EXAMPLE_PROMPTS, create_app
from web.backend import Backend, Models
from web.jobs import JobQueue
from web.uploads import MIB, Limits

DEFAULT_PORT = 7860
# The extra models: Models field → (its folder option, its model-arguments option), as the launchers'
# model choice (common.model_sources) passes them.
EXTRA_MODELS = {role.replace("-", "_"): flags for role, flags in WEB_ROLES.items()}


def web_parser() -> argparse.ArgumentParser:
    """The web server's own options; everything else goes to ``arguments.get_args``."""
    parser = argparse.ArgumentParser(
        "web_demo",
        description="Serve CogView on a local page and an HTTP JSON API.",
        add_help=False,
        allow_abbrev=False,  # --load (a model argument) must not be read as --load-caption
    )
    group = parser.add_argument_group("web demo")
    group.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)"
    )
    group.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: free)"
    )
    group.add_argument("--load-caption", help="caption model folder (image2text, post-selection)")
    group.add_argument("--load-sr", help="super-resolution model folder")
    for flag, model in (("--caption-model-args", "caption"), ("--sr-model-args", "super-resolution")):
        group.add_argument(
            flag,
            metavar="ARGS",
            help=f"the {model} model's own architecture, model arguments on top of the others, "
            f'e.g. {flag}="--num-layers 4 --hidden-size 128" (default: the same as --load\'s)',
        )
    group.add_argument(
        "--queue-size", type=int, default=4, help="requests that may wait (default 4); then 429"
    )
    group.add_argument("--max-images", type=int, default=8, help="images per request (default 8)")
    group.add_argument(
        "--max-candidates",
        type=int,
        default=32,
        help="images drawn per text2image request, num_images × post_select (default 32)",
    )
    group.add_argument("--max-prompt-chars", type=int, default=200, help="prompt characters (default 200)")
    group.add_argument("--max-upload-mb", type=float, default=8, help="MiB per uploaded image (default 8)")
    group.add_argument("--examples", type=Path, help="a UTF-8 file of example prompts, one per line")
    return parser


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(web options, the generation arguments as given) from the command line; ``-h`` shows both."""
    argv = list(sys.argv[1:] if argv is None else argv)
    web, rest = web_parser().parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        web_parser().print_help()
    return web, rest


def extra_model_args(
    web: argparse.Namespace, model_argv: Sequence[str], args: argparse.Namespace
) -> dict[str, argparse.Namespace]:
    """The arguments of each extra model given its own (``--sr-model-args``...), by ``Models`` field.

    They are ``get_args`` of the generation arguments ``model_argv`` (``args`` parsed) with the role's
    model arguments after them, so the last value wins as on any command line. Only the model
    configuration may change: the tokenizer, the image size and the sampling settings are shared.
    """
    own = {}
    for role, (load_flag, flag) in EXTRA_MODELS.items():
        text = _option_value(web, flag)
        if text is None:
            continue
        if _option_value(web, load_flag) is None:
            raise InputError(f"{flag} describes the model of {load_flag}, which is not given")
        own[role] = _args_on_top(flag, text, model_argv, args)
    return own


def _option_value(web: argparse.Namespace, flag: str) -> str | None:
    """What the web option ``flag`` was given (None: not given)."""
    return vars(web)[flag.removeprefix("--").replace("-", "_")]


def _args_on_top(
    flag: str, text: str, model_argv: Sequence[str], args: argparse.Namespace
) -> argparse.Namespace:
    """``get_args(model_argv + text)``, refused in one line if it fails or changes a shared setting."""
    try:
        extra = shlex.split(text)
    except ValueError as error:
        raise InputError(f"{flag}: {error}: {text!r}") from None
    said = io.StringIO()  # argparse's usage and error lines, made into one
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            own = get_args([*model_argv, *extra])
    except SystemExit:
        lines = said.getvalue().strip().splitlines()
        reason = lines[-1].partition("error: ")[2] if lines else ""
        raise InputError(f"{flag}: {reason or f'cannot read {text!r} as model arguments'}") from None
    sys.stderr.write(said.getvalue())
    model = model_argument_names()
    shared = [name for name, value in vars(own).items() if name not in model and value != vars(args)[name]]
    if shared:
        raise InputError(
            f"{flag}: {_option_of(shared[0], extra)} cannot differ between the models (they share the "
            "tokenizer, the image size and the sampling settings); give it model arguments only, such as "
            "--num-layers, --hidden-size, --num-attention-heads, --max-position-embeddings, "
            "--max-position-embeddings-finetune"
        )
    return own


def _option_of(name: str, words: Sequence[str]) -> str:
    """The option among ``words`` that sets the attribute ``name`` (``--image-size`` for ``image_size``)."""
    for word in words:
        option = word.partition("=")[0]
        if option.startswith("--") and option[2:].replace("-", "_") == name:
            return option
    return f"--{name.replace('_', '-')}"


def load_examples(path: Path | None) -> tuple[str, ...]:
    """The example prompts: the non-blank lines of ``path``, or the built-in ones."""
    if path is None:
        return EXAMPLE_PROMPTS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the example prompts {path}: {error}") from error
    return tuple(line.strip() for line in lines if line.strip()) or EXAMPLE_PROMPTS


def load_backend(
    web: argparse.Namespace,
    args: argparse.Namespace,
    own_args: Mapping[str, argparse.Namespace] | None = None,
) -> Backend:
    """Check every weight file, then load the tokenizer and each model once per folder and architecture.

    text2image's post-selection scores with the ``--post-select-load`` models when ``args`` names any (as
    ``generate_samples.py`` does), else with the caption model.

    ``own_args``: the arguments of the extra models given their own (:func:`extra_model_args`); the
    others are built with ``args``.
    """
    check_weights(args)
    folders = {role: _option_value(web, flag) for role, (flag, _) in EXTRA_MODELS.items()}
    named = [(EXTRA_MODELS[role][0], folder) for role, folder in folders.items() if folder is not None]
    for flag, folder in [*named, *(("--post-select-load", folder) for folder in args.post_select_load or ())]:
        try:
            read_tracker(folder)
        except CheckpointNotFoundError as error:
            raise MissingInputError(f"{flag}: {error}") from None
    device = init_device(args)
    set_random_seed(args.seed, device)
    tokenizer = build_tokenizer(args, device)
    code_grid_side(tokenizer, args.image_size)  # fail before the (slow) model load
    architecture = sorted(model_argument_names())
    loaded = {}

    def model(folder: str | None, model_args: argparse.Namespace):
        if folder is None:
            return None
        key = (str(Path(folder).resolve()), *(getattr(model_args, name) for name in architecture))
        if key not in loaded:
            print(f"web_demo: loading {folder}", file=sys.stderr)
            loaded[key] = build_model(
                model_args, tokenizer.num_tokens, device, model_dtype(args), load=folder
            )
        return loaded[key]

    role_args = {role: (own_args or {}).get(role, args) for role in EXTRA_MODELS}
    extras = {role: model(folder, role_args[role]) for role, folder in folders.items()}
    scorers = tuple(model(folder, args) for folder in args.post_select_load or ())  # base architecture
    models = Models(model(args.load, args), **extras, args=role_args, scorers=scorers)
    return Backend(models, tokenizer, args, args.image_size)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one), so the URL printed is the real one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror} (choose another --port)") from None
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C; returns the exit status."""
    web, model_argv = parse(argv)
    args = get_args(model_argv)
    try:
        counts = (web.queue_size, web.max_images, web.max_candidates, web.max_prompt_chars)
        if min(counts) < 1 or web.max_upload_mb <= 0:
            raise InputError(
                "--queue-size, --max-images, --max-candidates, --max-prompt-chars, --max-upload-mb "
                "must be positive"
            )
        examples = load_examples(web.examples)
        own_args = extra_model_args(web, model_argv, args)
        sock = bind(web.host, web.port)  # before the (slow) model load: a busy port fails at once
        backend = load_backend(web, args, own_args)
    except (InputError, OSError) as error:  # bad input, a busy port, an unreadable file: one line
        print(f"web_demo: {error}", file=sys.stderr)
        return 2
    limits = Limits(
        max_prompt_chars=web.max_prompt_chars,
        max_images=web.max_images,
        max_candidates=web.max_candidates,
        max_upload_bytes=int(web.max_upload_mb * MIB),
    )
    jobs = JobQueue(web.queue_size)
    app = create_app(backend, jobs, limits, examples)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    available = ", ".join(task for task, ready in backend.tasks.items() if ready)
    print(f"web_demo: serving {available} on http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and passes Ctrl-C on
        print("web_demo: stopped", file=sys.stderr)
    finally:
        jobs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

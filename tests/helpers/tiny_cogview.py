"""Command lines for the tiny CogView of ``tests/conftest.py``'s ``tiny_cogview`` fixture."""


def tiny_cogview_argv(cogview: dict, *extra: str) -> list[str]:
    """The arguments that load the tiny CogView and its VQ-VAE on the CPU, then ``extra``."""
    return [
        *("--load", str(cogview["checkpoint"]), "--img-tokenizer-path", str(cogview["vqvae"])),
        *cogview["args"],
        *("--device", "cpu"),
        *extra,
    ]

"""``nemo-eagle`` command line: a table of subcommand -> ``module:function`` taking ``argv``.

Subcommands import lazily so ``nemo-eagle tiles`` never pays for Lightning or Triton. The flags that mean the same
thing in several subcommands (``--model``, ``--device``, ``--dtype``, ``--max-tiles``, ``--out``, ``--api-key``)
are declared once here, so every subcommand spells and documents them alike.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def add_dtype_arg(
    p: Any, *, default: str | None = None, help_default: str = "the checkpoint's; float32 on CPU"
) -> None:
    p.add_argument("--dtype", default=default, choices=DTYPES, help=f"weights dtype (default: {help_default})")


def add_device_arg(p: Any, *, default: str | None = None, help_default: str = "cuda when available, else cpu") -> None:
    p.add_argument("--device", default=default, help=f"cpu, cuda, cuda:1, ... (default: {help_default})")


def add_out_arg(p: Any, *, aliases: tuple[str, ...] = (), **kw: Any) -> None:
    """``--out``; older spellings (``--output``) keep working but are not shown in ``--help``."""
    kw.setdefault("dest", "out")
    p.add_argument("--out", **kw)
    for alias in aliases:
        p.add_argument(alias, dest=kw["dest"], type=kw.get("type"), help=argparse.SUPPRESS)


def add_api_key_arg(p: Any, *, what: str = "the endpoint") -> None:
    p.add_argument("--api-key", default=None, help=f"bearer token for {what} (default: $OPENAI_API_KEY)")


def version() -> str:
    from nemo_eagle._version import __version__

    return __version__


COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "chat": ("nemo_eagle.commands:chat_main", "ask a question about one or more images"),
    "tiles": ("nemo_eagle.commands:tiles_main", "print the tiling plan and token count of an image"),
    "create-tiny": ("nemo_eagle.commands:create_tiny_main", "write a small RANDOM checkpoint in the official layout"),
    "convert": ("nemo_eagle.convert.cli:main", "convert between HF directories, .nemo files and megatron checkpoints"),
    "train": ("nemo_eagle.training.run:main", "train / fine-tune with Hydra overrides"),
    "serve": ("nemo_eagle.serve.cli:main", "serve the OpenAI-compatible REST API in front of Triton"),
    "export-onnx": ("nemo_eagle.export.onnx:main", "export vision tower + projector to ONNX"),
    "embed": ("nemo_eagle.embed.cli:embed_main", "embed texts/images to vectors"),
    "index": ("nemo_eagle.embed.cli:index_main", "index a folder of images / PDF pages into a vector store"),
    "search": ("nemo_eagle.embed.cli:search_main", "search a vector store"),
    "eval-retrieval": ("nemo_eagle.embed.cli:eval_main", "nDCG@k / recall@k / MRR on a ViDoRe-format dataset"),
    "train-embedder": ("nemo_eagle.embed.train:main", "contrastive fine-tuning of the embedder (InfoNCE, LoRA)"),
    "synth": ("nemo_eagle.synth.cli:main", "generate synthetic VQA data with a teacher endpoint"),
    "eval": ("nemo_eagle.eval.cli:main", "evaluate on a benchmark (DocVQA, ChartQA, ...)"),
}


def _usage() -> str:
    lines = ["usage: nemo-eagle [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`nemo-eagle COMMAND --help` documents every option of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"nemo-eagle {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nemo-eagle: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[name][0]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
            print(f"nemo-eagle {name}: not available in this version ({module_name} missing)", file=sys.stderr)
            return 2
        print(f"nemo-eagle {name}: missing dependency {e.name!r}; install the matching extra "
              f"(pip install 'nemo-eagle[...]')", file=sys.stderr)
        return 2
    return int(getattr(module, func_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

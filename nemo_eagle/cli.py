"""``nemo-eagle`` command line: a table of subcommand -> ``module:function`` taking ``argv``.

Subcommands import lazily so ``nemo-eagle tiles`` never pays for Lightning or Triton.
"""

from __future__ import annotations

import importlib
import sys

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
    lines = ["usage: nemo-eagle COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
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

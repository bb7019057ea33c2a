"""Command line of training: ``train``, ``tokenizer train`` and ``data prepare``.

``add_train_parser``, ``add_tokenizer_parser`` and ``add_data_parser`` each add one command to
the ``mambakit`` parser's subparsers. A handler is stored as ``handler`` in the parsed arguments
and returns an exit status. The modules behind the handlers, and torch, load only when a
command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile

logger = logging.getLogger(__name__)

DATA_HELP = (
    "UTF-8 text files, JSONL files (a 'text' field per line), folders of them, or one token-shard folder "
    "from 'mambakit data prepare'; for --task classify, JSONL files with 'text' and 'label'"
)


def _process_rank() -> int:
    """Return this process's rank under torchrun, 0 otherwise."""
    return int(os.environ.get("RANK", "0"))


def _command_train(args: argparse.Namespace) -> int:
    from mambakit.train.trainer import TrainConfig, train

    if _process_rank() > 0:
        # Only rank 0 logs progress; the others still report errors.
        logging.getLogger().setLevel(logging.ERROR)
    settings = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
    summary = train(TrainConfig(**settings), resume=args.resume, progress=not args.no_progress)
    if _process_rank() == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "train_losses"}, indent=2))
    return 0


def add_train_parser(commands) -> None:
    """Add the ``train`` command."""
    train = commands.add_parser("train", help="train a language model or a classifier")
    train.add_argument("--data", nargs="+", required=True, help=DATA_HELP)
    train.add_argument("--out", required=True, help="output folder for checkpoints, metrics and the model")
    train.add_argument("--tokenizer", help="tokenizer folder; default: the shard folder's, the --init-from "
                       "folder's, or a byte-level BPE trained on --data")
    train.add_argument("--vocab-size", type=int, help="vocabulary of the tokenizer trained when --tokenizer is absent")

    for name, kind, text in [
        ("d-model", int, "model width"), ("n-layer", int, "number of blocks"), ("d-state", int, "SSM state size"),
        ("steps", int, "optimizer steps"), ("batch-size", int, "sequences per micro-batch and process"),
        ("seq-len", int, "tokens per sequence (the maximum for --task classify)"),
        ("grad-accum", int, "micro-batches per step and process"),
        ("lr", float, "peak learning rate"), ("warmup-steps", int, "linear warmup steps"),
        ("weight-decay", float, "AdamW weight decay"), ("grad-clip", float, "gradient norm clip"),
        ("eval-every", int, "steps between validations"),
        ("eval-batches", int, "batches per language-model validation"),
        ("log-every", int, "steps between metric records"),
        ("checkpoint-every", int, "steps between checkpoints"),
        ("keep-checkpoints", int, "checkpoints to keep"), ("validation-fraction", float, "share of documents held out"),
        ("seed", int, "random seed"),
    ]:
        train.add_argument(f"--{name}", type=kind, help=text)

    train.add_argument("--backend", choices=["auto", "reference", "cpu", "triton", "mamba_ssm"],
                       help="selective-scan backend")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (default cpu); under torchrun, cuda means "
                       "cuda:LOCAL_RANK")
    train.add_argument("--dtype", choices=["fp32", "bf16"],
                       help="fp32 (default), or bf16 autocast around the forward pass with fp32 weights")
    train.add_argument("--grad-checkpointing", action="store_true", default=None,
                       help="recompute each block's activations in the backward pass to save memory")
    train.add_argument("--fsdp", action="store_true", default=None,
                       help="under torchrun, shard weights, gradients and optimizer state with FSDP instead of DDP")

    train.add_argument("--init-from", help="start from this model folder (fine-tuning); the model shape options "
                       "are then ignored")
    train.add_argument("--task", choices=["lm", "classify"], help="lm: next-token prediction (default); classify: "
                       "sequence classification of JSONL texts")
    train.add_argument("--validation-data", help="JSONL validation file for --task classify")

    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(handler=_command_train)


def _command_tokenizer_train(args: argparse.Namespace) -> int:
    from mambakit.tokenizer import train_tokenizer
    from mambakit.train.documents import plain_text_files

    with tempfile.TemporaryDirectory(prefix="mambakit-tokenizer-text-") as scratch:
        tokenizer = train_tokenizer(plain_text_files(args.data, scratch), args.vocab_size, out_dir=args.out)
    print(f"trained a byte-level BPE tokenizer with {tokenizer.vocab_size} entries in {args.out}")
    return 0


def add_tokenizer_parser(commands) -> None:
    """Add the ``tokenizer train`` command."""
    tokenizer = commands.add_parser("tokenizer", help="tokenizer tools")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    tokenizer_train = tokenizer_commands.add_parser("train", help="train a byte-level BPE tokenizer")
    tokenizer_train.add_argument("--data", nargs="+", required=True,
                                 help="UTF-8 text files, JSONL files (a 'text' field per line) or folders of them")
    tokenizer_train.add_argument("--vocab-size", type=int, required=True, help="vocabulary size")
    tokenizer_train.add_argument("--out", required=True, help="output folder")
    tokenizer_train.set_defaults(handler=_command_tokenizer_train)


def _command_data_prepare(args: argparse.Namespace) -> int:
    from mambakit.tokenizer import load_tokenizer
    from mambakit.train.shards import prepare_shards

    tokenizer = load_tokenizer(args.tokenizer)
    options = {"shard_tokens": args.shard_tokens} if args.shard_tokens is not None else {}
    index = prepare_shards(
        args.data, tokenizer, args.out, validation_fraction=args.validation_fraction, seed=args.seed,
        progress=not args.no_progress, **options,
    )
    summary = {split: {k: v for k, v in entry.items() if k != "files"} for split, entry in index["splits"].items()}
    print(json.dumps({"out": args.out, "dtype": index["dtype"], **summary}, indent=2))
    return 0


def add_data_parser(commands) -> None:
    """Add the ``data prepare`` command."""
    data = commands.add_parser("data", help="training data tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser(
        "prepare", help="tokenize text and JSONL files into memory-mapped token shards for 'mambakit train --data'"
    )
    prepare.add_argument("--data", nargs="+", required=True,
                         help="UTF-8 text files, JSONL files (a 'text' field per line) or folders of them")
    prepare.add_argument("--tokenizer", required=True, help="tokenizer folder or tokenizer.json")
    prepare.add_argument("--out", required=True, help="output folder for index.json, the shards and the tokenizer")
    prepare.add_argument("--validation-fraction", type=float, default=0.02,
                         help="share of documents held out for validation (default 0.02, as in train)")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the document shuffle (default 0, as in train)")
    prepare.add_argument("--shard-tokens", type=int,
                         help="maximum tokens per shard file (default 2**28, 512 MiB of uint16 ids)")
    prepare.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    prepare.set_defaults(handler=_command_data_prepare)

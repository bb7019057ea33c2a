"""Command line: ``mambakit generate | info | train | tokenizer train | data prepare | corpus build | bench | tasks``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")

logger = logging.getLogger("mambakit")


def default_model_path() -> str:
    """Return the folder of the small bilingual model shipped inside the package."""
    return DEFAULT_MODEL_DIR


def _resolve_tokenizer_path(model_dir: str, tokenizer_arg: str | None) -> str:
    if tokenizer_arg:
        return tokenizer_arg
    if os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        return model_dir
    raise FileNotFoundError(
        f"no tokenizer.json in {model_dir}; pass --tokenizer DIR (the published state-spaces/mamba-* "
        "models use the GPT-NeoX tokenizer, EleutherAI/gpt-neox-20b)"
    )


def _set_threads(count: int) -> None:
    """Use ``count`` CPU threads in torch and in the numba kernels, which keep separate pools."""
    import torch

    if count < 1:
        raise ValueError(f"--threads must be at least 1, got {count}")
    try:
        import numba

        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    # Set torch last: numba's OpenMP layer can reset the shared OpenMP thread count.
    torch.set_num_threads(count)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default 100)")
    parser.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens; 0 disables")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass in (0, 1] (default 0.9)")
    parser.add_argument("--min-p", type=float, default=0.0, help="drop tokens below this fraction of the top probability")
    parser.add_argument("--repetition-penalty", type=float, default=1.1,
                        help="above 1 discourages repeating earlier tokens (default 1.1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for repeatable sampling")
    parser.add_argument("--stop", action="append", default=[], help="stop when this text appears (repeatable)")


def _command_generate(args: argparse.Namespace) -> int:
    from mambakit.generation.generate import generate
    from mambakit.generation.sampling import SamplingConfig
    from mambakit.models.mamba_lm import Mamba
    from mambakit.ops.selective_scan import last_backend
    from mambakit.tokenizer import load_tokenizer

    model_dir = args.model or default_model_path()
    model = Mamba.from_pretrained(model_dir, dtype=args.dtype, device=args.device)
    model.scan_backend = args.backend
    tokenizer = load_tokenizer(_resolve_tokenizer_path(model_dir, args.tokenizer))
    if args.threads is not None:
        _set_threads(args.threads)

    # Check the sampling settings before echoing the prompt, so an error is the only output.
    SamplingConfig(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    start = time.perf_counter()
    write = (lambda piece: (sys.stdout.write(piece), sys.stdout.flush())) if not args.no_stream else None
    if write is not None:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
    text = generate(
        model, tokenizer, args.prompt,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        seed=args.seed, stop=args.stop, stream=write,
    )
    if write is None:
        sys.stdout.write(args.prompt + text)
    sys.stdout.write("\n")
    elapsed = time.perf_counter() - start
    logger.info("generated in %.2f s with scan backend %s", elapsed, last_backend())
    return 0


def _command_info(args: argparse.Namespace) -> int:
    from mambakit.config import MambaConfig
    from mambakit.models.checkpoint import find_weight_files

    path = args.path or default_model_path()
    config = MambaConfig.from_pretrained(path)
    from mambakit.models.mamba_lm import Mamba

    import torch

    with torch.device("meta"):
        parameters = Mamba(config).num_parameters()
    report = {
        "path": os.path.abspath(path),
        "layout": config.layout,
        "parameters": parameters,
        "weights": [os.path.basename(f) for f in find_weight_files(path)],
        "tokenizer": os.path.isfile(os.path.join(path, "tokenizer.json")),
        "config": {k: v for k, v in vars(config).items() if k != "layout"},
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _command_corpus_build(args: argparse.Namespace) -> int:
    from mambakit.data.corpus import build_default_corpus

    stats = build_default_corpus(args.out, seed=args.seed)
    print(json.dumps(dataclasses.asdict(stats), indent=2, ensure_ascii=False, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambakit", description="Mamba language models on CPU and GPU.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and the scan backend")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="continue a prompt")
    generate.add_argument("prompt", help="text to continue")
    generate.add_argument("--model", help="model folder (default: the bundled bilingual model)")
    generate.add_argument("--tokenizer", help="tokenizer folder or tokenizer.json (default: the model folder)")
    generate.add_argument("--device", default=None, help="torch device, for example cpu or cuda")
    generate.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                          help="weight dtype (default float32)")
    generate.add_argument("--backend", default="auto", choices=["auto", "reference", "cpu", "triton", "mamba_ssm"],
                          help="selective-scan backend (default auto)")
    generate.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    generate.add_argument("--no-stream", action="store_true", help="print the text at the end, not as it is made")
    _add_sampling_arguments(generate)
    generate.set_defaults(handler=_command_generate)

    info = commands.add_parser("info", help="describe a model folder")
    info.add_argument("path", nargs="?", help="model folder (default: the bundled model)")
    info.set_defaults(handler=_command_info)

    # train, tokenizer and data live beside their code, like bench and tasks below.
    from mambakit.train.cli import add_data_parser, add_tokenizer_parser, add_train_parser

    add_train_parser(commands)
    add_tokenizer_parser(commands)
    add_data_parser(commands)

    corpus = commands.add_parser("corpus", help="training corpora")
    corpus_commands = corpus.add_subparsers(dest="corpus_command", required=True)
    corpus_build = corpus_commands.add_parser(
        "build", help="build the bundled model's Chinese + English corpus from Debian packages"
    )
    corpus_build.add_argument("--out", required=True, help="output folder")
    corpus_build.add_argument("--seed", type=int, default=0, help="shuffle seed")
    corpus_build.set_defaults(handler=_command_corpus_build)

    # These commands live beside their code; their modules import torch only when run.
    from mambakit.bench.scaling import add_bench_parser
    from mambakit.tasks.cli import add_tasks_parser

    add_bench_parser(commands)
    add_tasks_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"mambakit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmambakit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``textclf train``: train a recurrent classifier (default: the embedded BBC News corpus)."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from training.data import DataError
from training.model import CELLS, POOLINGS
from training.train import TrainConfig, TrainingError, train

logger = logging.getLogger(__name__)

DEFAULTS = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = argparse.ArgumentParser(
        prog="textclf train",
        description="Train a recurrent text classifier. Defaults train the default BBC News model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=d.data, help="'bbc' (embedded corpus), a .csv (class,title,description) or a .jsonl ({text,label})")
    data.add_argument("--labels", default=d.labels, help="label map: 'a,b,c' or a file with one label per line (CSV class i = i-th label)")
    data.add_argument("--run-dir", default=d.run_dir, help="where the split, checkpoints, metrics and plots go")
    model = parser.add_argument_group("model")
    model.add_argument("--cell", choices=sorted(CELLS), default=d.cell)
    model.add_argument("--layers", type=int, default=d.num_layers, dest="num_layers")
    model.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=d.bidirectional)
    model.add_argument("--pooling", choices=POOLINGS, default=d.pooling)
    model.add_argument("--embedding-dim", type=int, default=d.embedding_dim)
    model.add_argument("--hidden-size", type=int, default=d.hidden_size)
    model.add_argument("--dropout", type=float, default=d.dropout)
    model.add_argument("--word-dropout", type=float, default=d.word_dropout, help="training only: probability of replacing a token by [UNK]")
    model.add_argument("--max-len", type=int, default=d.max_len, help="tokens kept per text; longer texts are truncated (and counted)")
    model.add_argument("--vocab-size", type=int, default=d.vocab_size)
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=d.epochs)
    opt.add_argument("--batch-size", type=int, default=d.batch_size)
    opt.add_argument("--lr", type=float, default=d.lr)
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay)
    opt.add_argument("--clip-norm", type=float, default=d.clip_norm)
    opt.add_argument("--patience", type=int, default=d.patience, help="epochs without a better validation macro-F1 before stopping")
    opt.add_argument("--seed", type=int, default=d.seed, help="weights, batch order and word dropout")
    data.add_argument("--split-seed", type=int, default=d.split_seed, help="the train/val/test split (keep it fixed to compare training seeds)")
    opt.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's choice)")
    opt.add_argument("--max-minutes", type=float, default=d.max_minutes, help="stop before an epoch that would exceed this training time")
    parser.add_argument("--no-test", action="store_false", dest="final_test",
                        help="model selection: never read the test split; metrics.json holds validation scores")
    opt.add_argument("--resume", action="store_true", help="continue <run-dir>/last.pt; model, data and optimiser settings come from it, --epochs/--max-minutes/--patience/--threads may change")
    parser.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    positive = ("num_layers", "embedding_dim", "hidden_size", "max_len", "epochs", "batch_size", "patience")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.vocab_size < 3:
        parser.error("--vocab-size must be >= 3")
    for name in ("dropout", "word_dropout"):
        if not 0.0 <= getattr(args, name) < 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1)")
    if args.lr <= 0:
        parser.error("--lr must be > 0")


def explicit_options(argv: list[str] | None, names: set[str]) -> set[str]:
    """The destinations the user actually typed (a value equal to the default still counts)."""
    unset = object()  # not a str, so argparse never converts it
    probe = build_parser()
    probe.set_defaults(**{name: unset for name in names})
    return {name for name, value in vars(probe.parse_args(argv)).items() if name in names and value is not unset}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args, parser)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    known = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in known})
    # on --resume, budget flags given explicitly on the command line win over the stored run's
    overrides = explicit_options(argv, known)
    try:
        report = train(config, resume=args.resume, overrides=overrides, final_test=args.final_test)
    except (DataError, TrainingError) as exc:
        print(f"textclf train: error: {exc}", file=sys.stderr)
        return 2
    scores = report if report["split"] == "test" else report["val"]
    print(f"{report['split']} accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f} -> {config.run_dir}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

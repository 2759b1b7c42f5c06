"""`edge-matte bench` arguments, checked as they are parsed (a bad one exits 2 naming it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from edge_matte.bench.catalog import BACKENDS, unavailable
from edge_matte.bench.scenes import SIZES


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures."""

    sizes: tuple[str, ...]
    backends: tuple[str, ...]  # available ones only
    skipped: dict[str, str]  # backend -> why it cannot run here (default list only)
    repeats: int
    threads: int
    weights: Path | None
    pipeline_seconds: float
    json: Path | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        """Settings from parsed arguments. Named backends were checked by the parser; of the
        default (all), those that cannot run here are skipped and reported."""
        wanted = args.backends or BACKENDS
        problems = {name: why for name in wanted if (why := unavailable(name)) is not None}
        return cls(
            sizes=args.sizes,
            backends=tuple(name for name in wanted if name not in problems),
            skipped=problems,
            repeats=args.repeats,
            threads=args.threads,
            weights=args.weights,
            pipeline_seconds=args.pipeline_seconds,
            json=args.json,
        )


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `edge-matte bench`."""
    parser.add_argument(
        "--sizes",
        type=_choices(SIZES, "size"),
        default=("480p", "720p", "1080p"),
        help=f"comma list of {','.join(SIZES)} (default 480p,720p,1080p)",
    )
    parser.add_argument(
        "--backends",
        type=_backends,
        default=None,
        help=f"comma list of {','.join(BACKENDS)} (default: every one available here)",
    )
    parser.add_argument(
        "--repeats", type=_positive(int), default=10, help="timed calls per row, after 2 warm-ups"
    )
    parser.add_argument(
        "--threads",
        type=_positive(int, zero=True),
        default=0,
        help="torch CPU threads (0 = default)",
    )
    parser.add_argument(
        "--weights", type=Path, help="checkpoint to time (default: random weights, same speed)"
    )
    parser.add_argument(
        "--pipeline-seconds",
        type=_positive(float, zero=True),
        default=20.0,
        help="measuring time of each pipeline row, split into windows between model-only runs "
        "(0 skips the pipeline rows)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")


def _choices(known: Collection[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type for a comma list of names from `known`, naming any unknown one."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}"
            )
        return names

    return parse


def _backends(text: str) -> tuple[str, ...]:
    """An argparse type for a comma list of backends that can all run here."""
    names = _choices(BACKENDS, "backend")(text)
    problems = [f"{name}: {why}" for name in names if (why := unavailable(name)) is not None]
    if problems:
        raise argparse.ArgumentTypeError("cannot run here: " + "; ".join(problems))
    return names


def _positive(kind: type[int] | type[float], zero: bool = False) -> Callable[[str], float]:
    """An argparse type for a number > 0 (>= 0 with `zero`)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from err
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero else '> 0'}: {text}")
        return value

    return parse

"""`edge-matte` command line: one subcommand per job, each module imported only when used.

Exit codes: 0 success, 1 runtime failure, 2 invalid config or arguments (nothing started).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_matte import __version__
from edge_matte.errors import ConfigError, EdgeMatteError
from edge_matte.runtime import logs

if TYPE_CHECKING:
    from edge_matte.config.schema import Config

EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_CONFIG = Path("/etc/edge-matte/edge-matte.yaml")


def _run(args: argparse.Namespace) -> int:
    from edge_matte.config import redact
    from edge_matte.control import overrides
    from edge_matte.runtime import memory
    from edge_matte.runtime.checks import problems
    from edge_matte.runtime.daemon import Daemon

    memory.tune_malloc()  # before any thread starts
    redact.install_log_filter()  # secrets out of every log line, from the first
    layers = overrides.load(args.config, problems)
    logging.getLogger().setLevel(layers.effective.log_level)
    if args.rebuild:
        _forget_engine_failures(layers.effective)
    daemon = Daemon(layers.effective, args.config, layers=layers)
    for url in daemon.urls():
        print(f"edge-matte: open {url} in VLC or ffplay", flush=True)
    return daemon.run()


def _forget_engine_failures(cfg: Config) -> None:
    """`run --rebuild`: build again the TensorRT engines whose build failed before."""
    from edge_matte.engine.cache import EngineCache

    forgotten = EngineCache(cfg.resolved_cache_dir() / "engines").forget_failures()
    logging.getLogger(__name__).info("forgot %d failed engine build(s)", forgotten)


def _check_config(args: argparse.Namespace) -> int:
    from edge_matte.runtime.checks import check_file

    dropped: list[str] = []  # remote changes `run` would drop: the operator should know
    problems = check_file(args.file, dropped)
    for problem in problems:  # the same lines as `run` prints, so one parser reads both
        print(f"edge-matte: config error: {_one_line(problem)}", file=sys.stderr)
    for line in dropped:
        print(_one_line(f"{args.file}: override not applied: {line}"))
    if not problems:
        print(f"{args.file}: ok")
    return EXIT_USAGE if problems else 0


def _config_show(args: argparse.Namespace) -> int:
    import json

    from edge_matte.control import overrides
    from edge_matte.runtime.checks import problems

    layers = overrides.load(args.config, problems)
    for key, value, origin in overrides.origins(layers, args.config):
        print(f"{key}: {json.dumps(value)}  # {origin}")
    for line in layers.dropped:
        print(f"# not applied: {line}")
    return 0


def _config_reset(args: argparse.Namespace) -> int:
    from edge_matte.config import schema as config_mod
    from edge_matte.control import overrides

    path = overrides.path_for(config_mod.load(args.config))
    removed = overrides.reset(path)
    print(
        f"{path}: {removed} override(s) removed; reload the daemon to apply (systemctl reload edge-matte)"
    )
    return 0


def _matte(args: argparse.Namespace) -> int:
    from edge_matte.tools.offline import matte_command

    return matte_command(args)


def _plate_build(args: argparse.Namespace) -> int:
    from edge_matte.tools.offline import plate_build_command

    return plate_build_command(args)


def _bench(args: argparse.Namespace) -> int:
    from edge_matte.bench import bench_command
    from edge_matte.runtime import memory

    memory.tune_malloc()  # as the daemon runs
    return bench_command(args)


def _calibrate(args: argparse.Namespace) -> int:
    from edge_matte.tools.calibrate import main_calibrate

    return main_calibrate(args)


def _export(args: argparse.Namespace) -> int:
    from edge_matte.tools.export import main_export

    return main_export(args)


def _soak(args: argparse.Namespace) -> int:
    from edge_matte.tools.soak import main_soak

    return main_soak(args)


def _install(args: argparse.Namespace) -> int:
    from edge_matte.tools.install import main_install

    return main_install(args)


DESCRIPTION = """\
edge-matte: an always-on background-matting appliance. A camera (CSI, V4L2, RTSP, a file or the
synthetic test:// scene) -> a background plate kept up to date -> BackgroundMattingV2 or the
classic engine -> a composite served over RTSP; controlled over MQTT (Home Assistant discovery
included), run under systemd. `run` is the daemon; the other commands are offline tools."""
EPILOG = """\
exit codes: 0 success, 1 runtime failure, 2 invalid configuration or arguments (nothing started).
Every command has its own help: edge-matte COMMAND --help."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help (not for flags and options without a default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        if action.help and "(default" in action.help:  # already says it in its own words
            return action.help
        return super()._get_help_string(action)


def _verbose_options(defaults: bool) -> argparse.ArgumentParser:
    """-v, accepted before and after the command (the command's copy must not reset the first)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="debug logging",
    )
    return options


def _command(sub: Any, name: str, text: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter, -v, and its help as its description."""
    return sub.add_parser(
        name,
        help=text,
        description=text,
        formatter_class=_HelpFormatter,
        parents=[_verbose_options(defaults=False)],
        **kwargs,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-matte",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
        parents=[_verbose_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(sub, "run", "run the daemon (camera -> matte -> composite -> RTSP)")
    run.add_argument(
        "--config", type=Path, default=None, help="YAML config file (default: built-in defaults)"
    )
    run.add_argument(
        "--rebuild",
        action="store_true",
        help="build again the TensorRT engines whose build failed before (failures are remembered)",
    )
    run.set_defaults(func=_run)

    check = _command(sub, "check-config", "validate a config file; exit 2 naming each problem")
    check.add_argument("file", type=Path, help="the YAML config file to check")
    check.set_defaults(func=_check_config)

    _add_config_commands(sub)

    from edge_matte.tools.offline import add_matte_arguments, add_plate_build_arguments

    matte = _command(sub, "matte", "matte images or a video offline (the daemon's engines)")
    add_matte_arguments(matte)
    matte.set_defaults(func=_matte)

    plate = _command(sub, "plate", "background plate tools").add_subparsers(
        dest="plate_command", required=True, metavar="COMMAND"
    )
    build = _command(
        plate, "build", "build a plate from a recording of the room (may never be empty)"
    )
    add_plate_build_arguments(build)
    build.set_defaults(func=_plate_build)

    from edge_matte.bench import add_bench_arguments

    bench = _command(
        sub, "bench", "time every fast path and the pipeline against the plain FP32 model"
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)

    from edge_matte.tools.calibrate import add_arguments as add_calibrate_arguments

    calibrate = _command(
        sub, "calibrate", "measure the empty scene and write a calibration profile"
    )
    add_calibrate_arguments(calibrate)
    calibrate.set_defaults(func=_calibrate)

    from edge_matte.tools.export import add_arguments as add_export_arguments

    export = _command(sub, "export", "export the static networks for other runtimes")
    onnx = _command(
        export.add_subparsers(dest="export_command", required=True, metavar="COMMAND"),
        "onnx",
        "fixed-shape ONNX graphs (base, refiner convs, full model) for trtexec/ONNX Runtime",
    )
    add_export_arguments(onnx)
    onnx.set_defaults(func=_export)

    from edge_matte.tools.soak import add_arguments as add_soak_arguments

    soak = _command(
        sub, "soak", "run the daemon under load for N minutes and judge leaks and fps (opt-in)"
    )
    add_soak_arguments(soak)
    soak.set_defaults(func=_soak)

    from edge_matte.tools.install import add_arguments as add_install_arguments

    install = _command(sub, "install-service", "install (or --uninstall) the systemd service")
    add_install_arguments(install)
    install.set_defaults(func=_install)
    return parser


def _add_config_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = _command(
        sub, "config", "show the effective config, or drop the remote overrides"
    ).add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    show = _command(
        config, "show", "every setting with its origin: default, the config file or an override"
    )
    show.add_argument(
        "--effective", action="store_true", help="the merged config (the only view there is)"
    )
    reset = _command(
        config, "reset", "remove the overrides remote control saved in the state directory"
    )
    for command, func in ((show, _config_show), (reset, _config_reset)):
        command.add_argument(
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"config file (default: {DEFAULT_CONFIG})",
        )
        command.set_defaults(func=func)


def _one_line(text: str) -> str:
    """Multi-line messages (a YAML parser's) folded into one line, as logs and scripts expect."""
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except ConfigError as err:
        for problem in err.problems:  # every problem, one per line
            print(f"edge-matte: config error: {_one_line(problem)}", file=sys.stderr)
        return EXIT_USAGE
    except EdgeMatteError as err:
        print(f"edge-matte: {err}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())

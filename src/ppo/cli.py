"""The `ppo` command: train, eval, presets, plot, compare, experiment, reference."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tomllib
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import click

from ppo import settings
from ppo.config import (
    GROUPS,
    Config,
    ConfigError,
    flag_name,
    from_dict,
    keep_wrapper_tables,
    load_toml,
    read_regular_file,
    refuse_unnamed_imports,
    to_flags,
)
from ppo.experiments import EXPERIMENTS
from ppo.extras import require

# Settings that may change when a run is resumed; the rest define the run.
RESUMABLE = {"total_timesteps", "device", "threads", "checkpoint_every", "tensorboard",
             "dist_timeout", "track", "wandb_project", "wandb_group", "eval_every",
             "eval_episodes", "eval_deterministic", "stop_at_return"}
CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit status 2, no traceback."""

    exit_code = 2


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors that report bad input or a failed run, as one line without a traceback."""
    from ppo.checkpoint import CheckpointError, RunDirError
    from ppo.distributed import DistributedError
    from ppo.envs import EnvError
    from ppo.learners import NonFiniteError

    return (ConfigError, CheckpointError, RunDirError, EnvError, NonFiniteError,
            DistributedError)


def _as_user_error(e: Exception, message: str | None = None) -> UserError:
    from ppo.distributed import DistributedError

    error = UserError(str(e) if message is None else message)
    error.secondary = isinstance(e, DistributedError)  # likely another rank's failure
    return error


def _run_guarded(fn: Callable[[], Any]) -> Any:
    from ppo.launcher import Stopped

    try:
        return fn()
    except _user_errors() as e:
        raise _as_user_error(e) from None
    except Stopped as e:
        click.echo(str(e), err=True)
        sys.exit(128 + e.signum)
    except OSError as e:
        raise UserError(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None


def _config_options(command: Callable) -> Callable:
    """One flag per Config field, help and default taken from the dataclass."""
    for f in reversed(dataclasses.fields(Config)):
        name = flag_name(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{f.metadata['help']}  [default: {shown}]"
        if f.type == "bool":
            decl = f"{name}/--no-{name[2:]}"
            command = click.option(decl, f.name, default=None, help=help_text)(command)
            continue
        if f.type in ("dict[str, Any]", "list[dict[str, Any]]"):
            metavar = "KEY=VALUE" if f.type.startswith("dict") else "MODULE:CLASS"
            command = click.option(name, f.name, multiple=True, metavar=metavar,
                                   help=f"{f.metadata['help']}  [default: none]")(command)
            continue
        kind: Any = {"int": int, "int | None": int, "float": float,
                     "float | None": float}.get(f.type, str)
        if "choices" in f.metadata:
            kind = click.Choice(f.metadata["choices"])
        metavar = "W1,W2" if f.type.startswith("list[int]") else None
        command = click.option(name, f.name, type=kind, default=None, metavar=metavar,
                               help=help_text)(command)
    return command


def _toml_value(text: str) -> Any:
    """A TOML literal (true, 3, 0.5, "x", [1, 2]); anything else is taken as a string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _parse_flags(flags: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    for name in ("hidden_sizes", "actor_hidden_sizes", "critic_hidden_sizes"):
        if name in given:
            try:
                given[name] = [int(w) for w in given[name].split(",") if w.strip()]
            except ValueError:
                raise ConfigError(
                    f"{name} must be comma-separated integers, got {given[name]!r}") from None
    if "env_kwargs" in given:
        pairs = [item.partition("=") for item in given["env_kwargs"]]
        if bad := [key for key, eq, _ in pairs if not (key and eq)]:
            raise ConfigError(f"--env-kwargs takes KEY=VALUE, got {bad[0]!r}")
        given["env_kwargs"] = {key: _toml_value(value) for key, _, value in pairs}
    if "wrappers" in given:
        given["wrappers"] = [{"path": path} for path in given["wrappers"]]
    return given


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("ppo.presets").iterdir()
                  if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; `ppo presets` lists them")
    return load_toml(Path(str(resources.files("ppo.presets") / f"{name}.toml")), "preset")


def _train_args(ctx: click.Context, leave_out: set[str]) -> list[str]:
    """This `ppo train` command line, less the options named in leave_out: what a child
    process (a torchrun worker, one seed of --seeds) runs."""
    given = {name: value for name, value in ctx.params.items()
             if value is not None and name not in leave_out}
    args = []
    for param in ctx.command.params:
        if param.name in given and param.name not in CONFIG_FIELDS:
            value = given[param.name]
            if not param.is_flag:
                args += [param.opts[0], str(value)]
            elif value or param.secondary_opts:  # one side of --x/--no-x
                args.append(param.opts[0] if value else param.secondary_opts[0])
    return args + to_flags(_parse_flags({k: v for k, v in given.items() if k in CONFIG_FIELDS}))


# torchrun without its traceback when a worker fails: the worker has said why, in one line.
TORCHRUN = """import logging, sys
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run
logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
try:
    run(parse_args(sys.argv[1:]))
except ChildFailedError as e:
    codes = [f.exitcode for f in e.failures.values()]
    sys.exit(next((c for c in codes if 0 < c < 256), 1))
"""
# Where the workers of `--nproc` leave their error line for the launcher to print once.
ERRORS_DIR_ENV = "PPO_NPROC_ERRORS"


def _launch_torchrun(nproc: int, args: list[str]) -> int:
    """`torchrun --standalone --nproc-per-node N -m ppo train ARGS`; returns its exit status.
    Each worker's error line goes to a file; the distinct ones are printed here, once."""
    errors = Path(tempfile.mkdtemp(prefix="ppo-nproc-"))
    command = [sys.executable, "-c", TORCHRUN, "--standalone", f"--nproc-per-node={nproc}",
               "-m", "ppo", "train", *args]
    # One thread per rank, as torchrun would set, without its warning about it.
    env = {"OMP_NUM_THREADS": "1", **os.environ, ERRORS_DIR_ENV: str(errors)}
    try:
        process = subprocess.Popen(command, env=env)
        # Ctrl-C reaches torchrun and the workers directly; SIGTERM is passed on. Either way
        # the workers finish their update and checkpoint; wait for them.
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                    signal.SIGTERM: signal.signal(signal.SIGTERM,
                                                  lambda signum, _: process.send_signal(signum))}
        try:
            status = process.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for line in _worker_errors(errors):
            click.echo(line, err=True)
        return status
    finally:
        shutil.rmtree(errors, ignore_errors=True)


def _worker_errors(errors: Path) -> list[str]:
    """The distinct error lines of the workers, rank 0's first; a rank that only lost
    contact with the others (because one failed) is not the cause, and is left out when
    another rank said what went wrong."""
    found = []
    for path in sorted(errors.glob("rank*"), key=lambda p: int(p.name[4:])):
        kind, _, line = path.read_text().partition("\t")
        found.append((kind, line.rstrip("\n")))
    causes = [line for kind, line in found if kind == "cause"]
    return list(dict.fromkeys(causes or [line for _, line in found][:1]))


def _report_error(line: str, secondary: bool) -> None:
    """An error line: on stderr, or, in a worker of `--nproc`, for the launcher to print."""
    errors = os.environ.get(ERRORS_DIR_ENV)
    if errors and "RANK" in os.environ and Path(errors).is_dir():
        kind = "contact" if secondary else "cause"
        (Path(errors) / f"rank{int(os.environ['RANK'])}").write_text(f"{kind}\t{line}\n")
    else:
        click.echo(line, err=True)


def default_run_dir(cfg: Config, seed: bool = True) -> str:
    """runs/<env>__<random seed>__<time>; without the random seed for a group of seeds."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.env_id)
    return str(Path("runs") / "__".join([env, *([str(cfg.seed)] if seed else []), stamp]))


def parse_seeds(spec: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,3,7' and '0-2,5' too."""
    seeds: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ConfigError(f"--seeds takes seeds and ranges like 0-4 or 0,3,7, got {spec!r}")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise ConfigError(f"--seeds range {part.strip()} is empty: write it low-high")
        seeds += range(first, last + 1)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds names a seed twice: {spec!r}")
    return seeds


class GroupedHelp(click.Command):
    """`--help` lists the command's own options, then the Config flags in sections (Env, PPO,
    Network, ...) named by each field's metadata. Click's own help formatter, no dependency."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                field = CONFIG_FIELDS.get(param.name)
                sections.setdefault(field.metadata["group"] if field else "Options",
                                    []).append(record)
        for title in ("Options", *GROUPS):
            if title in sections:
                with formatter.section(title):
                    formatter.write_dl(sections[title])


class OneLineErrors(click.Group):
    """Every usage error, Click's own included, as one `error:` line with exit status 2."""

    def main(self, args: list[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        if not (sys.argv[1:] if args is None else args):  # plain `ppo`: its help
            with click.Context(self, info_name=kwargs.get("prog_name", "ppo")) as ctx:
                click.echo(self.get_help(ctx))
            return 0
        LIBRARY_WARNINGS.start()
        warnings.showwarning = LIBRARY_WARNINGS.show
        try:
            result = super().main(args, *rest, standalone_mode=False, **kwargs)
            LIBRARY_WARNINGS.release()
            return result
        except click.ClickException as e:
            _report_error(f"error: {e.format_message()}", getattr(e, "secondary", False))
            sys.exit(e.exit_code)
        except click.Abort:  # Ctrl-C before training started (Click prints a newline first)
            click.echo("error: interrupted before training started", err=True)
            sys.exit(128 + signal.SIGINT)


@click.group(cls=OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Proximal Policy Optimization (PPO-Clip) on PyTorch and Gymnasium."""


def entry() -> None:
    """The `ppo` program. With torch loaded, the interpreter's own teardown takes ~0.5 s
    (measured with torch 2.13 on CPU) and does nothing a command needs: once the command has
    returned, its threads have finished and the exit handlers have run (envs, workers and
    files are closed by then), the process ends at once."""
    try:
        main()
        code: Any = 0
    except SystemExit as e:
        code = e.code
    if "torch" not in sys.modules:
        sys.exit(code)
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # what Python runs at exit (multiprocessing's included)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a closed stream
            stream.flush()
    os._exit(code)


# Stop signals: what a terminal sends to the whole foreground process group.
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class _LibraryWarnings:
    """A library's warnings (Gymnasium's env checker, say) as one `warning:` line each,
    without the source location and the terminal colours. Until training starts (or the
    command ends well) they are held: a command that fails prints its one error line alone,
    which names what the warning was about."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        """A command begins: hold its warnings."""
        self.held: list[str] = []
        self.seen: set[str] = set()  # each text once, however many envs say it
        self.live = False

    def show(self, message: Warning | str, category: type[Warning], filename: str,
             lineno: int, file: Any = None, line: str | None = None) -> None:
        text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(message).split()))
        if text in self.seen:
            return
        self.seen.add(text)
        self.held.append(f"warning: {text}")
        if self.live:
            self.release()

    def release(self) -> None:
        for line in self.held:
            click.echo(line, err=True)
        self.held.clear()
        self.live = True


LIBRARY_WARNINGS = _LibraryWarnings()


@main.command(cls=GroupedHelp)
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML file of settings; flags override it. An env or wrapper given as "
              "module:Name in it is imported only when --env or --wrapper names it too.")
@click.option("--preset", help="A shipped hyperparameter preset (see `ppo presets`); it "
              "replaces the env's own settings.")
@click.option("--defaults", type=click.Choice(settings.DEFAULTS), default="task",
              show_default=True,
              help="Where a new run's settings start: task (the settings shipped for the env, "
              "else those for its kind of task: `ppo presets` lists both), kind (those for its "
              "kind of task), or plain (the defaults listed here).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in this directory from its last valid checkpoint. --env "
              "and --wrapper may name its env and wrappers (needed for module:Name ones).")
@click.option("--seeds", "seed_list",
              help="Train these seeds (e.g. 0-4, or 0,3,7), each as its own `ppo train` "
              "process, in one group directory: --run-dir, default runs/<env>__<time>, with "
              "a seedN directory per seed. The same command with that --run-dir resumes it.")
@click.option("--jobs", type=click.IntRange(min=1),
              help="With --seeds: seeds trained at a time, one core each.  [default: 1]")
@click.option("--quiet", is_flag=True, help="No per-update lines.")
@click.option("--nproc", type=click.IntRange(min=1),
              help="Train with N processes on this machine, each with its own envs: "
              "runs `torchrun --standalone --nproc-per-node N -m ppo train ...`.")
@_config_options
def train(config_file: Path | None, preset: str | None, defaults: str,
          resume_dir: Path | None, seed_list: str | None, jobs: int | None, quiet: bool,
          nproc: int | None, **flags: Any) -> None:
    """Train an agent. Plain `ppo train` trains LunarLander-v3 with the settings shipped for it
    (the RL Baselines3 Zoo's); `--preset lunarlander` gives the standard PPO settings
    (Schulman et al. 2017)."""
    if nproc is not None and "WORLD_SIZE" in os.environ:
        raise UserError("--nproc launches torchrun, and this process already runs under "
                        "torchrun (WORLD_SIZE is set); give the process count to torchrun only")
    if seed_list is not None:
        _run_guarded(lambda: _train_seeds(seed_list, jobs or 1, config_file, preset,
                                          defaults, resume_dir, nproc, flags))
        return
    if jobs is not None:
        raise UserError("--jobs applies to --seeds only")
    if nproc is not None and nproc > 1:
        cores = os.cpu_count() or 1
        if nproc > cores:
            raise UserError(f"--nproc {nproc} is more processes than this machine's {cores} "
                            "cores")
        # Bad input is reported once, here, not by each of the processes.
        _run_guarded(lambda: _check_train(config_file, preset, defaults, resume_dir, flags))
        sys.exit(_launch_torchrun(nproc, _train_args(click.get_current_context(), {"nproc"})))
    stdout = _ClosablePipe.install()

    def run() -> None:
        given = _parse_flags(flags)
        if resume_dir is not None:
            if not (resume_dir / "config.toml").exists():
                raise ConfigError(f"{resume_dir} is not a run directory (no config.toml)")
            # Held from the first check to the last write: nobody changes the run in between.
            with _run_lock(resume_dir):
                agent = _resume(resume_dir, given, quiet, config_file, preset)
                _train(agent, resume_dir, False, stdout)
        else:
            cfg, source = _fresh_config(config_file, preset, defaults, given)
            agent = _build(lambda: _agent_class()(cfg, verbose=not quiet))
            _train(agent, Path(cfg.run_dir), True, stdout, source)

    _run_guarded(run)


def _agent_class() -> type:
    from ppo.agent import PPO

    return PPO


def _resolve(config_file: Path | None, preset: str | None, defaults: str,
             given: dict[str, Any]) -> tuple[Config, str]:
    """The run's settings (ppo.settings: the env's own or its kind's, then the preset, the
    config file and the flags), validated, with the extras they need installed; and the line
    saying where the base settings came from. An env or wrapper a file names with a module
    part is imported only if the flags name it too (README, Security)."""
    file_values = load_toml(config_file) if config_file else None
    preset_values = load_preset(preset) if preset else None
    for values, origin in ((file_values, str(config_file)), (preset_values, f"preset {preset}")):
        if values:
            given = keep_wrapper_tables(values, given)
            refuse_unnamed_imports(values, given, origin)
    resolved = settings.resolve(given, file_values, preset_values, defaults)
    refuse_unnamed_imports(resolved.values, given, "the shipped settings")
    cfg = from_dict(resolved.values)
    if cfg.track:
        require("wandb", "--track")
    return cfg, resolved.source


def _check_train(config_file: Path | None, preset: str | None, defaults: str,
                 resume_dir: Path | None, flags: dict[str, Any]) -> None:
    """Everything `ppo train` checks before it starts, without starting: for --nproc."""
    from ppo.envs import make_env
    from ppo.spaces import ActionSpec, ObsEncoder

    given = _parse_flags(flags)
    if resume_dir is not None:
        _resume_point(resume_dir, given, config_file, preset)
        return
    cfg, _ = _fresh_config(config_file, preset, defaults, given)
    env = make_env(cfg)
    try:
        ObsEncoder(env.observation_space)
        ActionSpec(env.action_space)
    finally:
        env.close()


def _fresh_config(config_file: Path | None, preset: str | None, defaults: str,
                  given: dict[str, Any]) -> tuple[Config, str]:
    """The config of a new run, checked with all that can be checked before its envs exist:
    values, what they would import, memory, the run directory."""
    from ppo.checkpoint import run_files
    from ppo.config import check_memory

    cfg, source = _resolve(config_file, preset, defaults, given)
    if cfg.run_dir is None:
        cfg = cfg.replace(run_dir=default_run_dir(cfg))
    check_memory(cfg, 1, 1)  # the config alone; the agent checks again with the env's widths
    run_dir = Path(cfg.run_dir)
    if os.path.lexists(run_dir) and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} exists and is not a directory")
    if files := run_files(run_dir):
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(files)}); use --resume "
                          "or another --run-dir")
    parent = run_dir.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create run directory {run_dir}: {parent} is not a "
                          "writable directory")
    return cfg, source


class _ResumePoint(NamedTuple):
    checkpoint: Path
    update: int
    overrides: dict[str, Any]
    notes: list[str]


def _resume_point(run_dir: Path, given: dict[str, Any], config_file: Path | None,
                  preset: str | None) -> _ResumePoint:
    """Read-only: the checkpoint to resume from and what must be said about the run's files.
    Every check a resume makes happens here, before anything is written. --env and --wrapper
    name the run's own env and wrappers (a module they name is imported only then)."""
    from ppo.checkpoint import check_meta, newest_valid_checkpoint
    from ppo.metrics import check_metrics

    named = {k: given.pop(k) for k in ("env_id", "wrappers") if k in given}
    fixed = sorted(set(given) - RESUMABLE)
    if fixed or config_file or preset:
        raise ConfigError(
            "a resumed run keeps its config; only "
            f"{', '.join(sorted(RESUMABLE))} may be given with --resume (and --env and "
            "--wrapper, naming its own)")
    if given.get("track"):
        require("wandb", "--track")
    if not (run_dir / "config.toml").exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.toml)")
    found = newest_valid_checkpoint(run_dir, check=lambda t, meta, path: check_meta(meta, path))
    notes = [f"note: skipped checkpoint {why}" for why in found.skipped]
    stored = found.meta["config"]
    stored_env = stored.get("env_id", Config.env_id)
    stored_wrappers = stored.get("wrappers", [])
    if "env_id" in named and named["env_id"] != stored_env:
        raise ConfigError(f"a resumed run keeps its env, {stored_env}; --env may only name it")
    if "wrappers" in named and ([w["path"] for w in named["wrappers"]]
                                != [w["path"] for w in stored_wrappers]):
        raise ConfigError("a resumed run keeps its wrappers, "
                          f"{', '.join(w['path'] for w in stored_wrappers) or 'none'}; "
                          "--wrapper may only name them, in order")
    refuse_unnamed_imports(stored, named, str(found.path))
    repair = check_metrics(run_dir / "metrics.csv", found.meta["update"])
    if found.skipped or repair.changed:
        notes.append(f"note: resuming from {found.path.name}, update {found.meta['update']}")
    # The names go on to PPO.load, which imports only what they name; the stored wrappers
    # keep their kwargs.
    overrides = {**given, **({"env_id": stored_env} if "env_id" in named else {}),
                 **({"wrappers": stored_wrappers} if "wrappers" in named else {})}
    return _ResumePoint(found.path, found.meta["update"], overrides, notes)


def _resume(run_dir: Path, given: dict[str, Any], quiet: bool, config_file: Path | None,
            preset: str | None) -> Any:
    """The agent of a resumed run, its files repaired once every check has passed. The
    caller holds the run directory."""
    from ppo.metrics import check_metrics, repair_metrics

    point = _resume_point(run_dir, given, config_file, preset)
    agent = _build(lambda: _agent_class().load(point.checkpoint, verbose=not quiet,
                                               run_dir=str(run_dir), **point.overrides))
    if agent.rank == 0:
        metrics = run_dir / "metrics.csv"
        try:
            notes = point.notes + repair_metrics(
                metrics, check_metrics(metrics, point.update), point.update)
        except BaseException:
            _close(agent, failing=True)
            raise
        for note in notes:
            click.echo(note, err=True)
    return agent


def _run_lock(run_dir: Path, create: bool = False) -> contextlib.AbstractContextManager:
    """The run directory's writer lock, in the process that writes it (rank 0 under torchrun)."""
    from ppo.checkpoint import run_dir_lock

    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext(run_dir)
    return run_dir_lock(run_dir, create=create)


def _train(agent: Any, run_dir: Path, fresh: bool, stdout: _ClosablePipe,
           source: str | None = None) -> None:
    """Hold the run directory and train; errors end as one line that names the run. What
    the run is (where its settings come from, its directory) goes to stdout, so that stderr
    holds diagnostics only."""
    from ppo.checkpoint import run_files
    from ppo.signals import Interrupted

    if agent.rank == 0:
        if source is not None:
            stdout.echo(source)
        stdout.echo(f"run directory: {run_dir}" if fresh else f"resuming {run_dir} at update "
                    f"{agent.update}, step {agent.global_step}")
    if stdout.closed:  # its reader left before training began: nothing to train for
        _close(agent, failing=False)
        click.echo("standard output was closed (its reader exited) before training started",
                   err=True)
        sys.exit(128 + signal.SIGPIPE)
    with _StopGuard() as guard:
        stdout.on_close = guard.stop_training
        failing = True
        try:
            with _run_lock(run_dir, create=fresh):
                if fresh and agent.rank == 0 and (files := run_files(run_dir)):
                    raise ConfigError(f"{run_dir} already holds a run ({', '.join(files)}); "
                                      "use --resume or another --run-dir")
                guard.started = True
                try:  # warnings held until the envs have made it through an update
                    agent.learn(callback=lambda row, agent: LIBRARY_WARNINGS.release())
                except Interrupted as e:
                    if agent.rank == 0:
                        cause = ("standard output was closed (its reader exited)"
                                 if stdout.closed else "the terminal closed (SIGHUP)"
                                 if guard.hangup else f"{signal.Signals(e.signum).name} received")
                        click.echo(f"{cause}: stopped after update {agent.update} with a "
                                   f"checkpoint; continue with: ppo train --resume {run_dir}",
                                   err=True)
                    failing = False
                    signum = (signal.SIGPIPE if stdout.closed else
                              signal.SIGHUP if guard.hangup else e.signum)
                    sys.exit(128 + signum)
                failing = False
        except _user_errors() as e:
            message = str(e)
            if str(run_dir) not in message:  # the line must stand alone: say which run stopped
                message += f" (run directory {run_dir})"
            raise _as_user_error(e, message) from None
        finally:
            _close(agent, failing)


def _close(agent: Any, failing: bool) -> None:
    """Close the envs; when an error is already on its way out, a second one from closing
    (a dead worker's pipe) must not replace it. Env worker processes still alive after a
    failure are killed: they ignore the stop signals (see _build), and would otherwise be
    waited for forever at exit."""
    try:
        agent.close()
    except Exception as e:
        failing_close = f"could not close the envs cleanly: {type(e).__name__}: {e}"
    else:
        failing_close = None
    if failing or failing_close:
        for child in multiprocessing.active_children():
            child.kill()
    if failing_close and not failing:
        raise UserError(failing_close)


def _build(make: Callable[[], Any]) -> Any:
    """The agent `make` builds, its subprocess env workers deaf to Ctrl-C, SIGTERM and
    SIGHUP sent to the process group (a terminal sends Ctrl-C to all): this process stops
    after the update, checkpoints, then closes them. Blocked, not ignored: workers inherit
    the blocked mask, and a signal that arrives meanwhile reaches this process after."""
    agent = None
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            agent = make()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending Ctrl-C: here
    except BaseException:
        if agent is not None:
            _close(agent, failing=True)
        raise
    return agent


class _StopGuard:
    """Signals around `learn`, whose own handlers turn Ctrl-C and SIGTERM into a stop after
    the update. SIGHUP (the terminal closed) stops it as SIGTERM does. Outside those handlers
    once training has started (the last checkpoint, closing the envs), Ctrl-C and SIGTERM are
    noted, not obeyed, so that an impatient second Ctrl-C cannot cut the checkpoint or the
    cleanup short; a third ends the process. Before training they act as without the guard."""

    def __init__(self) -> None:
        self.hangup = False
        self.started = False
        self.late = 0

    def stop_training(self) -> None:
        """Ask a running `learn` to stop after the update, as SIGTERM does."""
        if self.started:
            os.kill(os.getpid(), signal.SIGTERM)

    def _on_hangup(self, signum: int, frame: Any) -> None:
        self.hangup = True
        os.kill(os.getpid(), signal.SIGTERM)

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.late += 1
        if not self.started or self.late >= 3:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __enter__(self) -> _StopGuard:
        self.previous = {signal.SIGHUP: signal.signal(signal.SIGHUP, self._on_hangup)}
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._on_stop)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class _ClosablePipe:
    """stdout for `ppo train`: when its reader goes away (`ppo train | head`), the run stops
    after the current update with a checkpoint, as on Ctrl-C, and writes nothing more there.
    Stopping (not training on unseen) is what a closed pipe asks of a producer; the
    checkpoint makes the stop lossless."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.closed = False
        self.on_close: Callable[[], None] | None = None  # told once the reader has gone

    @classmethod
    def install(cls) -> _ClosablePipe:
        if sys.stdout is None:  # started with stdout closed
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's lifetime)
        guard = cls(sys.stdout)
        sys.stdout = guard
        return guard

    def write(self, text: str) -> int:
        if self.closed:
            return len(text)
        with self._failures():
            return self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        if not self.closed:
            with self._failures():
                self.stream.flush()

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            self._reader_gone()
        except OSError as e:  # a full disk under `> log`: say it was standard output
            raise OSError(e.errno, e.strerror, "standard output") from None

    def echo(self, line: str) -> None:
        self.write(line + "\n")
        self.flush()

    def _reader_gone(self) -> None:
        self.closed = True
        # Later writes, and the interpreter's last flush, go nowhere instead of failing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.stream.fileno())
        os.close(devnull)
        if self.on_close is not None:
            self.on_close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


# What defines a group of seeds: everything but the random seed and what a resumed run may
# change.
GROUP_FILE = "group.toml"


def _train_seeds(seed_list: str, jobs: int, config_file: Path | None, preset: str | None,
                 defaults: str, resume_dir: Path | None, nproc: int | None,
                 flags: dict[str, Any]) -> None:
    """`ppo train --seeds`: every seed as a `ppo train` child process in one group directory;
    finished seeds are skipped and checkpointed ones resumed, so the same command resumes."""
    import tomli_w

    from ppo.checkpoint import write_atomic
    from ppo.experiments import final_returns
    from ppo.launcher import Job, finished, run_jobs
    from ppo.stats import iqm_estimate

    seeds = parse_seeds(seed_list)
    given = _parse_flags(flags)
    clashes = [name for name, given_it in (("--seed", "seed" in given),
                                           ("--resume", resume_dir is not None),
                                           ("--nproc", nproc is not None)) if given_it]
    if clashes:
        raise ConfigError(f"--seeds takes no {', '.join(clashes)}: it sets the random seed "
                          "of each run, and the same command resumes the group")
    cfg, source = _resolve(config_file, preset, defaults, given)
    group = Path(cfg.run_dir or default_run_dir(cfg, seed=False))
    settings = {k: v for k, v in cfg.to_dict().items()
                if k not in ("seed", "run_dir", *RESUMABLE)}
    group_file = group / GROUP_FILE
    if group_file.is_file():
        before = load_toml(group_file)
        changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
        if changed:
            raise ConfigError(f"{group} holds seeds trained with other settings "
                              f"({', '.join(changed)}); use another --run-dir")
    elif group.exists() and any(group.iterdir()):
        raise ConfigError(f"{group} is not empty and holds no group of seeds ({GROUP_FILE}); "
                          "use another --run-dir")
    ctx = click.get_current_context()
    args = _train_args(ctx, {"seed_list", "jobs", "seed", "run_dir", "total_timesteps", "quiet"})
    if cfg.track and cfg.wandb_group is None:
        args += to_flags({"wandb_group": group.name})
    todo = [Job(group / f"seed{seed}", seed, cfg.total_timesteps, tuple(args))
            for seed in seeds]
    group.mkdir(parents=True, exist_ok=True)
    write_atomic(group_file, tomli_w.dumps(settings).encode())
    left = sum(not finished(job) for job in todo)
    click.echo(source, err=True)
    click.echo(f"group directory: {group} ({left} of {len(todo)} seeds to train, {jobs} at a "
               f"time; logs in seedN.log)", err=True)
    codes = run_jobs(todo, jobs, report=click.echo)
    returns = final_returns({"group": [job.run_dir for job in todo]})["group"]
    if len(returns):
        click.echo(f"final return over {len(returns)} seeds: IQM {iqm_estimate(returns).format()}"
                   " (95% bootstrap CI)")
    if any(codes.values()):
        sys.exit(1)


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")


@main.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--episodes", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--deterministic/--stochastic", default=True, show_default=True,
              help="Take the policy's most likely action, or sample it.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint file (default: the run's latest valid one).")
@click.option("--seed", default=10_000, show_default=True, type=click.IntRange(0, 2**63 - 1),
              help="Seed of the evaluation episodes, kept apart from training seeds.")
@click.option("--video", type=click.Path(path_type=Path),
              help="Record one episode to this video file (.mp4, .mkv or .mov).")
@click.option("--env", "env_id", help="Evaluate on this env (default: the run's). An env given "
              "as module:Name is imported only when named here.")
@click.option("--wrapper", "wrappers", multiple=True, metavar="MODULE:CLASS",
              help="The run's wrappers, named (a module:Class wrapper is imported only when "
              "named here), or others to evaluate with; repeatable.")
def eval_command(run_dir: Path, episodes: int, deterministic: bool, checkpoint: Path | None,
                 seed: int, video: Path | None, env_id: str | None,
                 wrappers: tuple[str, ...]) -> None:
    """Mean and std of the return of a trained agent, over fresh episodes."""
    from ppo.checkpoint import check_meta, load_checkpoint, newest_valid_checkpoint
    from ppo.evaluation import evaluate, record_video

    def run() -> None:
        if not run_dir.exists():
            raise ConfigError(f"run directory not found: {run_dir}")
        if not run_dir.is_dir():
            raise ConfigError(f"{run_dir} is not a run directory")
        if video is not None:
            require("video", "--video")
            _check_video_path(video)
        source = checkpoint if checkpoint is not None else run_dir
        if source.is_dir():
            found = newest_valid_checkpoint(source, check=lambda t, m, p: check_meta(m, p))
            for why in found.skipped:
                click.echo(f"note: skipped checkpoint {why}", err=True)
            path, meta = found.path, found.meta
        else:
            path, (_, meta) = source, load_checkpoint(source)
            check_meta(meta, path)
        named: dict[str, Any] = {"env_id": env_id} if env_id else {}
        if wrappers:
            named = keep_wrapper_tables(meta["config"], {**named, "wrappers": list(wrappers)})
        refuse_unnamed_imports(meta["config"], named, str(path))
        agent = _agent_class().load(path, verbose=False, num_envs=1, vector="sync", **named)
        failing = True
        try:
            returns = evaluate(agent, episodes, deterministic, seed)
            mode = "deterministic" if deterministic else "stochastic"
            click.echo(f"{agent.config.env_id}: return {returns.mean():.1f} +- "
                       f"{returns.std():.1f} over {episodes} episodes ({mode}, update "
                       f"{agent.update})")
            if video is not None:
                click.echo(f"video: {record_video(agent, video, deterministic, seed)}")
            failing = False
        finally:
            _close(agent, failing)

    _run_guarded(run)


def _check_video_path(video: Path) -> None:
    """Refuse, before evaluating, a video path that cannot be written as a video."""
    if video.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"--video {video}: give a video file name ending in "
                          f"{', '.join(VIDEO_SUFFIXES)}")
    if os.path.lexists(video) and not video.is_file():
        raise ConfigError(f"--video {video} exists and is not a regular file")
    parent = video.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--video {video}: {parent} is not a writable directory")


@main.command()
def presets() -> None:
    """List the shipped hyperparameter presets."""

    def run() -> None:
        for name in preset_names():
            click.echo(f"{name:24s} {load_preset(name).get('env_id', '')}")

    _run_guarded(run)


@main.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--eps", default=0.2, show_default=True, help="Clip range for `plot objective`.")
@click.option("--out", type=click.Path(path_type=Path), help="Output image (.png, .pdf, .svg).")
def plot(targets: tuple[str, ...], eps: float, out: Path | None) -> None:
    """`ppo plot objective`: L^CLIP against r. `ppo plot RUN_DIR...`: learning curves of runs
    or groups of runs (grouped by their settings), the IQM of each group's final return with
    its 95% bootstrap CI, and performance profiles (beside the curves, as *-profiles)."""
    from ppo import figures
    from ppo.experiments import env_of, final_returns, group_members
    from ppo.stats import iqm_estimate

    def run() -> None:
        if out is not None and out.suffix.lower() not in figures.FORMATS:
            raise ConfigError(f"--out {out}: give an image name ending in "
                              f"{', '.join(figures.FORMATS)}")
        if targets == ("objective",):
            click.echo(str(figures.plot_objective(eps, out or Path(f"objective_eps{eps}.png"))))
            return
        for target in targets:
            if not Path(target).is_dir():
                raise ConfigError(f"run directory not found: {target}")
        dirs = [run for t in targets for run in group_members(Path(t))]
        for d in dirs:
            _check_run_files_readable(d)
        curves = figures.plot_runs(dirs, out or Path(targets[0]) / "curves.png")
        groups = figures.group_runs(dirs)
        by_env: dict[str, dict[str, Any]] = {}
        for label, returns in final_returns(groups).items():
            by_env.setdefault(env_of(groups[label][0]), {})[label] = returns
            shown = (f"IQM {iqm_estimate(returns).format()} (95% bootstrap CI)" if len(returns)
                     else "no episode finished yet")
            click.echo(f"{label}: final return over {len(returns)} runs: {shown}")
        profiles = figures.plot_profiles(
            by_env, curves.with_name(f"{curves.stem}-profiles{curves.suffix}"))
        click.echo(str(curves))
        click.echo(str(profiles))

    try:
        _run_guarded(run)
    except ValueError as e:
        raise UserError(str(e)) from None


def _check_run_files_readable(run_dir: Path) -> None:
    """A run directory whose files are regular and of bounded size (a FIFO would hang)."""
    from ppo.metrics import METRICS_MAX_BYTES

    if not run_dir.is_dir():
        raise ConfigError(f"run directory not found: {run_dir}")
    if os.path.lexists(run_dir / "config.toml"):
        load_toml(run_dir / "config.toml", "run config")
    if os.path.lexists(run_dir / "metrics.csv"):
        read_regular_file(run_dir / "metrics.csv", "metrics file", METRICS_MAX_BYTES)


@main.command()
@click.argument("group_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threshold", type=float,
              help="Solved once the mean return of the last 100 episodes beats this (default: "
              "the env's own where known: CartPole-v1 475, LunarLander-v3 200, Pendulum-v1 "
              "-300).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Performance-profile image (.png, .pdf, .svg; default: profiles.png in the "
              "first group directory).")
def compare(group_dirs: tuple[Path, ...], threshold: float | None, out: Path | None) -> None:
    """Compare groups of runs (e.g. the directories of `ppo train --seeds`): per group, the
    interquartile mean of the final return with its 95% stratified-bootstrap confidence
    interval (Agarwal et al. 2021), runs solved and steps to solve; every run; and
    performance profiles. Prints Markdown."""
    from ppo.experiments import compare as compare_groups

    def run() -> str:
        return compare_groups(list(group_dirs), threshold, out or group_dirs[0] / "profiles.png")

    try:
        click.echo(_run_guarded(run), nl=False)
    except ValueError as e:
        raise UserError(str(e)) from None


@main.command("tune")
@click.option("--env", "env_id", required=True, help="Gymnasium env id to tune on.")
@click.option("--trials", type=click.IntRange(min=1), required=True,
              help="Trials to finish, counting those of an earlier run of the same study.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trials at a time, each its own process on one core.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Tuning directory (default tuning/<env>): the study (SQLite), every "
              "trial, best.toml. The same command resumes it.")
@click.option("--space", "space_file", type=click.Path(path_type=Path),
              help="Search-space TOML file (default: the RL Zoo's PPO ranges, shipped as "
              "ppo/tuning/space.toml).")
@click.option("--target", type=float, help="Solved once the mean evaluation return reaches "
              "this (default: the env's reward threshold, e.g. 475 for CartPole-v1).")
@click.option("--budget", type=click.IntRange(min=1),
              help="Env steps a trial may take at most (default: the settings' "
              "total_timesteps).")
@click.option("--eval-steps", type=click.IntRange(min=1),
              help="Evaluate every this many env steps (default: a fiftieth of the budget).")
@click.option("--eval-episodes", type=click.IntRange(min=1), default=10, show_default=True,
              help="Episodes per evaluation (deterministic unless the settings say not).")
@click.option("--seed", type=int, help="Seed of every trial's training and of the sampler "
              "(default: the settings' seed).")
@click.option("--seeds-per-trial", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train each trial on this many seeds (--seed, --seed + 1, ...): solved "
              "only if all solve, scored by their mean steps. One seed rewards luck.")
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML file of settings the trials start from (the sampled ones replace "
              "theirs).")
@click.option("--defaults", type=click.Choice(settings.DEFAULTS), default="task",
              show_default=True, help="Where the trials' settings start, as for `ppo train`.")
def tune_command(env_id: str, trials: int, jobs: int, out: Path | None,
                 space_file: Path | None, target: float | None, budget: int | None,
                 eval_steps: int | None, eval_episodes: int, seed: int | None,
                 seeds_per_trial: int, config_file: Path | None, defaults: str) -> None:
    """Tune the settings for an env with Optuna (the tune extra): TPE sampling, median
    pruning on the evaluation return, objective the fewest env steps until an evaluation
    reaches the target. Writes best.toml for `ppo train --config`."""

    def run() -> None:
        require("tune", "ppo tune")
        from ppo.tuning.study import build_spec, check_spec, tune

        spec, space = build_spec(env_id, config_file, defaults, target, budget, eval_steps,
                                 eval_episodes, seed, space_file, seeds_per_trial)
        where = out or Path("tuning") / re.sub(r"[^A-Za-z0-9._-]+", "_", env_id)
        check_spec(where, spec)
        click.echo(f"tuning {env_id} in {where}: {trials} trials, {jobs} at a time; target "
                   f"{spec.target:g} within {spec.budget} env steps", err=True)
        best = tune(where, spec, space, trials, jobs, report=click.echo)
        click.echo(f"best settings: {best}" if best else "no trial completed: no best.toml")

    _run_guarded(run)


@main.command()
@click.argument("name", type=click.Choice(list(EXPERIMENTS)))
@click.option("--out", type=click.Path(path_type=Path), default=Path("experiments"),
              show_default=True, help="Folder for the runs, table and figures.")
@click.option("--seeds", type=click.IntRange(min=1), help="Seeds per variant (default: the "
              "experiment's own).")
@click.option("--steps", type=click.IntRange(min=1), help="Env steps per run (default: the "
              "experiment's own: 1.5M, 1M for the MuJoCo ones).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Runs at a time; one core each.")
@click.option("--tasks", help="Comma-separated env ids: only these of the experiment's tasks.")
def experiment(name: str, out: Path, seeds: int | None, steps: int | None, jobs: int,
               tasks: str | None) -> None:
    """Run one of the experiments (resumable), then write its table and figures."""
    from ppo.experiments import run_experiment

    chosen = None if tasks is None else [t.strip() for t in tasks.split(",") if t.strip()]
    click.echo(str(_run_guarded(lambda: run_experiment(name, out, seeds, steps, jobs,
                                                       chosen))))


@main.command()
@click.argument("implementation", type=click.Choice(["numpy"]))
@click.option("--env", "env_id", default="CartPole-v1", show_default=True)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--iterations", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--target-return", type=float, default=475.0, show_default=True,
              help="Stop once the mean return of the last 100 episodes reaches this.")
def reference(implementation: str, env_id: str, seed: int, iterations: int,
              target_return: float) -> None:
    """Reference implementations: `numpy` is PPO-Clip in NumPy alone, a linear softmax policy
    with the clipped surrogate's gradient derived by hand (no autograd)."""
    from ppo.reference.numpy_ppo import train as numpy_train

    def run() -> None:
        _check_numpy_env(env_id)
        numpy_train(env_id=env_id, seed=seed, iterations=iterations,
                    target_return=target_return)

    _run_guarded(run)


NUMPY_MAX_OBS = 10_000


def _check_numpy_env(env_id: str) -> None:
    """The NumPy PPO takes flat Box observations and Discrete actions."""
    import gymnasium as gym
    from gymnasium import spaces

    from ppo.envs import env_spec

    try:
        env = gym.make(env_spec(env_id))
    except ConfigError:
        raise
    except Exception as e:  # an env's constructor can raise anything
        raise ConfigError(f"cannot make env {env_id!r}: {type(e).__name__}: {e}") from None
    obs, act = env.observation_space, env.action_space
    env.close()
    if not (isinstance(obs, spaces.Box) and len(obs.shape) == 1
            and isinstance(act, spaces.Discrete)):
        raise ConfigError(
            f"the NumPy PPO takes envs with flat Box observations and Discrete actions "
            f"(CartPole-v1, Acrobot-v1, LunarLander-v3); {env_id} has "
            f"{type(obs).__name__} observations and {type(act).__name__} actions")
    if obs.shape[0] > NUMPY_MAX_OBS:  # a linear policy on raw observations: a few dozen
        raise ConfigError(f"the NumPy PPO takes observations of at most {NUMPY_MAX_OBS:,} "
                          f"numbers; {env_id} has {obs.shape[0]:,}")



if __name__ == "__main__":
    sys.exit(main())

"""The `ppo` command: train, eval, presets, plot, compare, experiment, reference."""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import click

from ppo import settings
from ppo.config import GROUPS, Config, ConfigError, flag_name, from_dict, load_toml, to_flags
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


def _run_guarded(fn: Callable[[], Any]) -> Any:
    from ppo.checkpoint import CheckpointError
    from ppo.distributed import DistributedError
    from ppo.launcher import Stopped
    from ppo.learners import NonFiniteError
    from ppo.rollout import EnvValueError, EnvWorkerError

    try:
        return fn()
    except (ConfigError, CheckpointError, EnvValueError, EnvWorkerError, NonFiniteError,
            DistributedError) as e:
        raise UserError(str(e)) from None
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
    return load_toml(Path(str(resources.files("ppo.presets") / f"{name}.toml")))


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


def _launch_torchrun(nproc: int, args: list[str]) -> int:
    """`torchrun --standalone --nproc-per-node N -m ppo train ARGS`; returns its exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "ppo", "train", *args]
    # One thread per rank, as torchrun would set, without its warning about it.
    process = subprocess.Popen(command, env={"OMP_NUM_THREADS": "1", **os.environ})
    # Ctrl-C reaches torchrun and the workers directly; SIGTERM is passed on. Either way the
    # workers finish their update and checkpoint; wait for them.
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM,
                                              lambda signum, _: process.send_signal(signum))}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def default_run_dir(cfg: Config, seed: bool = True) -> str:
    """runs/<env>__<seed>__<time>; without the seed for a group of seeds."""
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

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)


@click.group(cls=OneLineErrors,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Proximal Policy Optimization (PPO-Clip) on PyTorch and Gymnasium."""


@main.command(cls=GroupedHelp)
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML file of settings; flags override it.")
@click.option("--preset", help="A shipped hyperparameter preset (see `ppo presets`); it "
              "replaces the env's own settings.")
@click.option("--defaults", type=click.Choice(settings.DEFAULTS), default="task",
              show_default=True,
              help="Where a new run's settings start: task (the settings shipped for the env, "
              "else those for its kind of task: `ppo presets` lists both), kind (those for its "
              "kind of task), or plain (the defaults listed here).")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in this directory from its last checkpoint.")
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
    """Train an agent. Plain `ppo train` trains LunarLander-v3 with the standard PPO settings
    (Schulman et al. 2017)."""
    from ppo.agent import PPO
    from ppo.checkpoint import holds_run
    from ppo.signals import Interrupted

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
        sys.exit(_launch_torchrun(nproc, _train_args(click.get_current_context(), {"nproc"})))

    def run() -> None:
        given = _parse_flags(flags)
        if resume_dir is not None:
            fixed = sorted(set(given) - RESUMABLE)
            if fixed or config_file or preset:
                raise ConfigError(
                    "a resumed run keeps its config; only "
                    f"{', '.join(sorted(RESUMABLE))} may be given with --resume")
            if given.get("track"):
                require("wandb", "--track")
            agent = PPO.resume(resume_dir, verbose=not quiet, **given)
            if agent.rank == 0:
                click.echo(f"resuming {resume_dir} at update {agent.update}, "
                           f"step {agent.global_step}", err=True)
        else:
            cfg, source = _resolve(config_file, preset, defaults, given)
            if cfg.run_dir is None:
                cfg = cfg.replace(run_dir=default_run_dir(cfg))
            if holds_run(cfg.run_dir):
                raise ConfigError(
                    f"{cfg.run_dir} already holds a run; use --resume or another --run-dir")
            agent = PPO(cfg, verbose=not quiet)
            if agent.rank == 0:
                click.echo(source, err=True)
                click.echo(f"run directory: {cfg.run_dir}", err=True)
        try:
            agent.learn()
        except Interrupted as e:
            if agent.rank == 0:
                click.echo(f"{e}; checkpoint written, resume with --resume", err=True)
            sys.exit(128 + e.signum)
        finally:
            agent.close()

    _run_guarded(run)


def _resolve(config_file: Path | None, preset: str | None, defaults: str,
             given: dict[str, Any]) -> tuple[Config, str]:
    """The run's settings (ppo.settings: the env's own or its kind's, then the preset, the
    config file and the flags), validated, with the extras they need installed; and the line
    saying where the base settings came from."""
    resolved = settings.resolve(given, load_toml(config_file) if config_file else None,
                                load_preset(preset) if preset else None, defaults)
    cfg = from_dict(resolved.values)
    if cfg.track:
        require("wandb", "--track")
    return cfg, resolved.source


# What defines a group of seeds: everything but the seed and what a resumed run may change.
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
        raise ConfigError(f"--seeds takes no {', '.join(clashes)}: it sets the seed of each "
                          "run, and the same command resumes the group")
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


@main.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--episodes", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--deterministic/--stochastic", default=True, show_default=True,
              help="Take the policy's most likely action, or sample it.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Checkpoint file (default: the run's latest).")
@click.option("--seed", default=10_000, show_default=True,
              help="Seed of the evaluation episodes, kept apart from training seeds.")
@click.option("--video", type=click.Path(path_type=Path), help="Record one episode to this .mp4.")
def eval_command(run_dir: Path, episodes: int, deterministic: bool, checkpoint: Path | None,
                 seed: int, video: Path | None) -> None:
    """Mean and std of the return of a trained agent, over fresh episodes."""
    from ppo.agent import PPO
    from ppo.evaluation import evaluate, record_video

    def run() -> None:
        if not run_dir.is_dir():
            raise ConfigError(f"run directory not found: {run_dir}")
        if video is not None:
            require("video", "--video")
        agent = PPO.load(checkpoint or run_dir, verbose=False, num_envs=1, vector="sync")
        returns = evaluate(agent, episodes, deterministic, seed)
        mode = "deterministic" if deterministic else "stochastic"
        click.echo(f"{agent.config.env_id}: return {returns.mean():.1f} +- {returns.std():.1f} "
                   f"over {episodes} episodes ({mode}, update {agent.update})")
        if video is not None:
            click.echo(f"video: {record_video(agent, video, deterministic, seed)}")
        agent.close()

    _run_guarded(run)


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
        if targets == ("objective",):
            click.echo(str(figures.plot_objective(eps, out or Path(f"objective_eps{eps}.png"))))
            return
        dirs = [run for t in targets for run in group_members(Path(t))]
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
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML file of settings the trials start from (the sampled ones replace "
              "theirs).")
@click.option("--defaults", type=click.Choice(settings.DEFAULTS), default="task",
              show_default=True, help="Where the trials' settings start, as for `ppo train`.")
def tune_command(env_id: str, trials: int, jobs: int, out: Path | None,
                 space_file: Path | None, target: float | None, budget: int | None,
                 eval_steps: int | None, eval_episodes: int, seed: int | None,
                 config_file: Path | None, defaults: str) -> None:
    """Tune the settings for an env with Optuna (the tune extra): TPE sampling, median
    pruning on the evaluation return, objective the fewest env steps until an evaluation
    reaches the target. Writes best.toml for `ppo train --config`."""

    def run() -> None:
        require("tune", "ppo tune")
        from ppo.tuning.study import build_spec, check_spec, tune

        spec, space = build_spec(env_id, config_file, defaults, target, budget, eval_steps,
                                 eval_episodes, seed, space_file)
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
@click.option("--seed", default=0, show_default=True)
@click.option("--iterations", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--target-return", type=float, default=475.0, show_default=True,
              help="Stop once the mean return of the last 100 episodes reaches this.")
def reference(implementation: str, env_id: str, seed: int, iterations: int,
              target_return: float) -> None:
    """Reference implementations: `numpy` is PPO-Clip in NumPy alone, a linear softmax policy
    with the clipped surrogate's gradient derived by hand (no autograd)."""
    from ppo.reference.numpy_ppo import train as numpy_train

    _run_guarded(lambda: numpy_train(env_id=env_id, seed=seed, iterations=iterations,
                                     target_return=target_return))


if __name__ == "__main__":
    sys.exit(main())

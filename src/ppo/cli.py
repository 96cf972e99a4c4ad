"""The `ppo` command: train, eval, presets, plot, experiment, reference."""

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
from ppo.config import Config, ConfigError, from_dict, load_toml

# Settings that may change when a run is resumed; the rest define the run.
RESUMABLE = {"total_timesteps", "device", "threads", "checkpoint_every", "tensorboard",
             "dist_timeout", "eval_every", "eval_episodes", "eval_deterministic",
             "stop_at_return"}
OPTION_NAMES = {"env_id": "--env", "wrappers": "--wrapper"}


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit status 2, no traceback."""

    exit_code = 2


def _run_guarded(fn: Callable[[], Any]) -> Any:
    from ppo.checkpoint import CheckpointError
    from ppo.distributed import DistributedError
    from ppo.learners import NonFiniteError
    from ppo.rollout import EnvValueError, EnvWorkerError

    try:
        return fn()
    except (ConfigError, CheckpointError, EnvValueError, EnvWorkerError, NonFiniteError,
            DistributedError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"{e.strerror or e}: {e.filename}" if e.filename else str(e)) from None


def _config_options(command: Callable) -> Callable:
    """One flag per Config field, help and default taken from the dataclass."""
    for f in reversed(dataclasses.fields(Config)):
        name = OPTION_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
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
                given[name] = [int(w) for w in given[name].split(",")]
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


def _worker_args(ctx: click.Context) -> list[str]:
    """This `ppo train` command line less --nproc: what each torchrun worker runs."""
    args = []
    for param in ctx.command.params:
        value = ctx.params[param.name]
        if value is None or param.name == "nproc":
            continue
        if param.is_flag:  # --quiet, or one side of --x/--no-x
            if value or param.secondary_opts:
                args.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.multiple:
            args += [arg for item in value for arg in (param.opts[0], str(item))]
        else:
            args += [param.opts[0], str(value)]
    return args


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


def default_run_dir(cfg: Config) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    env = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.env_id)
    return str(Path("runs") / f"{env}__{cfg.seed}__{stamp}")


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


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="TOML file of settings; flags override it.")
@click.option("--preset", help="A shipped hyperparameter preset (see `ppo presets`); it "
              "replaces the env's own settings.")
@click.option("--env-settings/--no-env-settings", default=True,
              help="Start from the settings shipped for the env (or for its kind of task), or "
              "from the plain defaults listed here.  [default: env-settings]")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="Continue the run in this directory from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No per-update lines.")
@click.option("--nproc", type=click.IntRange(min=1),
              help="Train with N processes on this machine, each with its own envs: "
              "runs `torchrun --standalone --nproc-per-node N -m ppo train ...`.")
@_config_options
def train(config_file: Path | None, preset: str | None, env_settings: bool,
          resume_dir: Path | None, quiet: bool, nproc: int | None, **flags: Any) -> None:
    """Train an agent. Plain `ppo train` trains LunarLander-v3 with the standard PPO settings
    (Schulman et al. 2017)."""
    from ppo.agent import PPO
    from ppo.signals import Interrupted

    if nproc is not None and "WORLD_SIZE" in os.environ:
        raise UserError("--nproc launches torchrun, and this process already runs under "
                        "torchrun (WORLD_SIZE is set); give the process count to torchrun only")
    if nproc is not None and nproc > 1:
        sys.exit(_launch_torchrun(nproc, _worker_args(click.get_current_context())))

    def run() -> None:
        given = _parse_flags(flags)
        if resume_dir is not None:
            fixed = sorted(set(given) - RESUMABLE)
            if fixed or config_file or preset:
                raise ConfigError(
                    "a resumed run keeps its config; only "
                    f"{', '.join(sorted(RESUMABLE))} may be given with --resume")
            agent = PPO.resume(resume_dir, verbose=not quiet, **given)
            if agent.rank == 0:
                click.echo(f"resuming {resume_dir} at update {agent.update}, "
                           f"step {agent.global_step}", err=True)
        else:
            resolved = settings.resolve(given, load_toml(config_file) if config_file else None,
                                        load_preset(preset) if preset else None, env_settings)
            cfg = from_dict(resolved.values)
            if cfg.run_dir is None:
                cfg = cfg.replace(run_dir=default_run_dir(cfg))
            if (Path(cfg.run_dir) / "config.toml").exists():
                raise ConfigError(
                    f"{cfg.run_dir} already holds a run; use --resume or another --run-dir")
            agent = PPO(cfg, verbose=not quiet)
            if agent.rank == 0:
                click.echo(resolved.source, err=True)
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
    """`ppo plot objective`: L^CLIP against r. `ppo plot RUN_DIR...`: learning curves."""
    from ppo import figures

    def run() -> None:
        if targets == ("objective",):
            path = figures.plot_objective(eps, out or Path(f"objective_eps{eps}.png"))
        else:
            dirs = [Path(t) for t in targets]
            path = figures.plot_runs(dirs, out or dirs[0] / "curves.png")
        click.echo(str(path))

    try:
        _run_guarded(run)
    except ValueError as e:
        raise UserError(str(e)) from None


@main.command()
@click.argument("name", type=click.Choice(
    ["lunarlander", "trunk", "eps-ablation", "eps-ablation-harsh", "pitfalls", "mujoco",
     "ppo-vs-trpo", "breakout", "carracing", "memory"]))
@click.option("--out", type=click.Path(path_type=Path), default=Path("experiments"),
              show_default=True, help="Folder for the runs, table and figures.")
@click.option("--seeds", type=click.IntRange(min=1), help="Seeds per variant (default: the "
              "experiment's own).")
@click.option("--steps", type=click.IntRange(min=1), help="Env steps per run (default: the "
              "experiment's own: 1.5M, 1M for the MuJoCo ones).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Runs at a time; one core each.")
def experiment(name: str, out: Path, seeds: int | None, steps: int | None, jobs: int) -> None:
    """Run one of the seed's experiments (resumable), then write its table and figures."""
    from ppo.experiments import run_experiment

    click.echo(str(_run_guarded(lambda: run_experiment(name, out, seeds, steps, jobs))))


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

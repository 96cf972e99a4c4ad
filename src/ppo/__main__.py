from ppo.cli import entry

entry()

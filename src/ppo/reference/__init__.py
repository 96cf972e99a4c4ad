"""Independent NumPy oracles the engine is tested against: a NumPy PPO without autograd and a
NumPy GAE."""

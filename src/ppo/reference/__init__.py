"""The seed's first two layers in NumPy: oracles the engine is tested against."""

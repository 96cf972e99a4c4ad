"""PPO-Clip on PyTorch and Gymnasium."""

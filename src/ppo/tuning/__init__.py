"""Hyperparameter tuning with Optuna (`ppo tune`): the search space, one trial's measurement,
and the study that runs the trials."""

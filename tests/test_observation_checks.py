"""Observations handed to the agent are checked with messages a user can act on."""

import numpy as np
import pytest
from gymnasium import spaces

from ppo.envs import check_obs_batch

BOX = spaces.Box(-1.0, 1.0, (4,), np.float32)


def test_single_observations_and_batches_pass():
    batch, single = check_obs_batch(BOX, np.zeros(4, np.float32))
    assert single and batch.shape == (1, 4)
    batch, single = check_obs_batch(BOX, [[0.0] * 4] * 3)
    assert not single and batch.shape == (3, 4)
    batch, single = check_obs_batch(spaces.Discrete(5, start=1), 5)
    assert single and batch.tolist() == [5]
    batch, single = check_obs_batch(spaces.Discrete(5), np.array([0, 4]))
    assert not single and batch.tolist() == [0, 4]


@pytest.mark.parametrize(("space", "obs", "message"), [
    (BOX, np.zeros(3), "observation has shape (3,); this agent takes (4,), or a batch of shape "
                       "(N, 4)"),
    (BOX, np.zeros((5, 3)), "has shape (5, 3)"),
    (BOX, np.zeros((2, 2, 4)), "has shape (2, 2, 4)"),
    (BOX, np.zeros((0, 4)), "observation batch is empty"),
    (BOX, np.full(4, np.nan), "holds a non-finite value (nan) at index (0, 0)"),
    (BOX, np.array([[0, 0, 0, np.inf]] * 2), "non-finite value (inf) at index (0, 3)"),
    (BOX, np.array(["a", "b", "c", "d"]), "observation must be numbers"),
    (BOX, None, "observation must be numbers, got NoneType"),
    (BOX, {"obs": 1}, "observation must be numbers, got dict"),
    (BOX, [[1, 2], [3]], "observation must be"),
    (spaces.Discrete(16), 99, "observation 99 is outside Discrete(16, start=0)"),
    (spaces.Discrete(16), -1, "outside Discrete(16"),
    (spaces.Discrete(16), 1.5, "must be an integer"),
])
def test_bad_observations_are_value_errors_that_say_what_is_wrong(space, obs, message):
    with pytest.raises(ValueError) as info:
        check_obs_batch(space, obs)
    assert message in str(info.value)

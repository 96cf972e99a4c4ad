"""Spaces: observations encoded as one float vector per step (checked against Gymnasium's own
`flatten`), actions as heads over flat columns and back into env actions."""

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector.utils import concatenate, create_empty_array

from helpers_spaces import stored_actions
from ppo.config import ConfigError
from ppo.spaces import ActionSpec, ObsEncoder, ObservationError, is_image

BOX = spaces.Box(-1.0, 1.0, (2, 3), np.float32)

OBS_SPACES = {
    "box": BOX,
    "small-uint8-box": spaces.Box(0, 255, (8, 8, 3), np.uint8),
    "discrete": spaces.Discrete(5, start=1),
    "multidiscrete": spaces.MultiDiscrete([[2, 3], [4, 2]], start=[[0, 1], [-1, 0]]),
    "multibinary": spaces.MultiBinary((2, 2)),
    "dict": spaces.Dict({"pos": spaces.Box(-5.0, 5.0, (3,), np.float32),
                         "mode": spaces.Discrete(3), "flags": spaces.MultiBinary(2)}),
    "nested": spaces.Tuple((
        spaces.Discrete(2),
        spaces.Dict({"a": spaces.MultiDiscrete([3, 2]),
                     "b": spaces.Tuple((spaces.Box(-1.0, 1.0, (2,), np.float32),
                                        spaces.MultiBinary(1)))}))),
}


def _batch(space, n=6, seed=0):
    """n samples of `space`, batched as a vector env returns them, and the samples."""
    space.seed(seed)
    items = [space.sample() for _ in range(n)]
    return concatenate(space, items, create_empty_array(space, n)), items


# ---------------------------------------------------------------- observations
@pytest.mark.parametrize("space", OBS_SPACES.values(), ids=OBS_SPACES.keys())
def test_encoding_is_gymnasium_flatten(space):
    """Box and MultiBinary flattened, Discrete and MultiDiscrete one-hot, Dict and Tuple parts
    concatenated in Gymnasium's order: what `gymnasium.spaces.flatten` does to one sample."""
    encoder = ObsEncoder(space)
    batch, items = _batch(space)
    encoded = encoder(batch)
    assert encoded.dtype == np.float32
    assert encoded.shape == (6, spaces.flatdim(space)) == (6, encoder.width)
    expected = np.stack([spaces.flatten(space, x) for x in items]).astype(np.float32)
    np.testing.assert_array_equal(encoded, expected)
    # One observation, as predict gets it, encodes like its row of the batch.
    one = encoder.batch_of_one(items[2])
    assert one is not None
    np.testing.assert_array_equal(encoder(one), expected[2:3])
    assert encoder.batch_of_one(batch) is None  # a batch is not one observation


def test_discrete_observations_are_one_hot_from_start():
    encoder = ObsEncoder(spaces.Discrete(5, start=1))
    np.testing.assert_array_equal(encoder(np.array([1, 5])), np.eye(5, dtype=np.float32)[[0, 4]])
    assert not encoder.normalized_columns.any()


def test_normalized_columns_are_the_real_valued_ones():
    encoder = ObsEncoder(OBS_SPACES["dict"])  # keys sorted: flags (2), mode (3), pos (3)
    np.testing.assert_array_equal(encoder.normalized_columns, [False] * 5 + [True] * 3)
    nested = ObsEncoder(OBS_SPACES["nested"])  # Discrete 2, MultiDiscrete 3+2, Box 2, binary 1
    np.testing.assert_array_equal(nested.normalized_columns,
                                  [False] * 7 + [True] * 2 + [False])
    assert ObsEncoder(BOX).normalized_columns.all()


def test_text_parts_are_dropped():
    space = spaces.Dict({"obs": spaces.Box(-1.0, 1.0, (2,), np.float32),
                         "note": spaces.Text(8)})
    encoder = ObsEncoder(space)
    assert encoder.dropped == ["note"] and encoder.width == 2
    obs = np.array([[0.5, -0.5], [0.1, 0.2]], np.float32)
    np.testing.assert_array_equal(encoder({"obs": obs, "note": ("hello", "world")}), obs)
    nested = ObsEncoder(spaces.Tuple((spaces.Text(3), spaces.Discrete(2))))
    assert nested.dropped == ["[0]"] and nested.width == 2
    with pytest.raises(ConfigError, match="no part ppo can use"):
        ObsEncoder(spaces.Text(5))


@pytest.mark.parametrize("shape", [(64, 64, 3), (3, 84, 84), (84, 84), (32, 32, 1)])
def test_images_are_kept_as_uint8_for_a_cnn(shape):
    image = spaces.Box(0, 255, shape, np.uint8)
    assert is_image(image)
    batch = np.zeros((2, *shape), np.uint8)
    encoder = ObsEncoder(image)
    assert encoder.images and encoder.width == 0 and encoder(batch) is batch
    mixed = ObsEncoder(spaces.Dict({"cam": image, "x": spaces.Box(0.0, 1.0, (1,), np.float32)}))
    obs = mixed({"cam": batch, "x": np.ones((2, 1), np.float32)})
    assert obs["cam"] is batch and obs["vector"].shape == (2, 1)


@pytest.mark.parametrize("space", [
    spaces.Box(0.0, 1.0, (64, 64, 3), np.float32),  # not uint8
    spaces.Box(0, 255, (8, 8, 3), np.uint8),  # too small
    spaces.Box(0, 255, (64, 64, 5), np.uint8),  # too many channels
    spaces.Box(0, 255, (4, 64, 64, 3), np.uint8),  # not 2-D or 3-D
], ids=["float", "small", "channels", "4d"])
def test_not_images(space):
    assert not is_image(space)
    assert ObsEncoder(space).width == int(np.prod(space.shape))


@pytest.mark.parametrize("space, message", [
    (spaces.Sequence(spaces.Discrete(3)), "unsupported observation space Sequence"),
    (spaces.Dict({"ok": spaces.Discrete(2), "seq": spaces.Sequence(spaces.Discrete(3))}),
     r"Sequence \(seq\)"),
])
def test_unsupported_observation_spaces(space, message):
    with pytest.raises(ConfigError, match=message):
        ObsEncoder(space)


@pytest.mark.parametrize("space, bad", [
    (BOX, np.zeros((2, 3, 2), np.float32)),
    (spaces.Discrete(5, start=1), np.array([0, 1])),
    (spaces.Discrete(5, start=1), np.array([6])),
    (spaces.MultiDiscrete([2, 3]), np.array([[1, 3]])),
    (spaces.MultiBinary(3), np.zeros((2, 4))),
], ids=["box-shape", "discrete-below", "discrete-above", "multidiscrete", "multibinary"])
def test_observations_outside_the_space_are_refused(space, bad):
    with pytest.raises(ObservationError):
        ObsEncoder(space)(bad)


# ---------------------------------------------------------------- actions
# (space, heads as (kind, size), stored columns, distribution parameters, log-std entries)
ACTION_SPACES = {
    "discrete": (spaces.Discrete(4), [("categorical", 4)], 1, 4, 0),
    "discrete-start": (spaces.Discrete(3, start=-1), [("categorical", 3)], 1, 3, 0),
    "box": (spaces.Box(-1.0, 1.0, (2, 3), np.float32), [("gaussian", 6)], 6, 6, 6),
    "multidiscrete": (spaces.MultiDiscrete([2, 3]), [("categorical", 2), ("categorical", 3)],
                      2, 5, 0),
    "multidiscrete-2d": (spaces.MultiDiscrete([[2, 3], [4, 2]], start=[[0, 1], [-1, 0]]),
                         [("categorical", n) for n in (2, 3, 4, 2)], 4, 11, 0),
    "multibinary": (spaces.MultiBinary(3), [("bernoulli", 3)], 3, 3, 0),
    "tuple": (spaces.Tuple((spaces.Discrete(3), spaces.Box(-2.0, 2.0, (2,), np.float32))),
              [("categorical", 3), ("gaussian", 2)], 3, 5, 2),
    "dict": (spaces.Dict({"move": spaces.Discrete(3), "buttons": spaces.MultiBinary(2)}),
             [("bernoulli", 2), ("categorical", 3)], 3, 5, 0),  # keys sorted
}


@pytest.mark.parametrize("case", ACTION_SPACES.values(), ids=ACTION_SPACES.keys())
def test_heads_tile_the_columns(case):
    space, heads, columns, num_params, log_std_size = case
    spec = ActionSpec(space)
    assert [(h.kind, h.size) for h in spec.heads] == heads
    assert (spec.columns, spec.num_params, spec.log_std_size) == (columns, num_params,
                                                                   log_std_size)
    assert spec.mask_size == sum(size for kind, size in heads if kind == "categorical")
    assert spec.discrete == all(kind != "gaussian" for kind, _ in heads)
    assert spec.dtype == (np.int64 if spec.discrete else np.float32)
    # Each head's slices follow the previous head's, without gaps.
    ends = {"params": 0, "columns": 0, "log_std": 0, "mask": 0}
    for head in spec.heads:
        width = 1 if head.kind == "categorical" else head.size
        for name, size in (("params", head.size), ("columns", width),
                           ("log_std", head.size if head.kind == "gaussian" else None),
                           ("mask", head.size if head.kind == "categorical" else None)):
            got = getattr(head, name)
            if size is None:
                assert got is None
                continue
            assert (got.start, got.stop) == (ends[name], ends[name] + size)
            ends[name] += size
    assert ends == {"params": num_params, "columns": columns, "log_std": log_std_size,
                    "mask": spec.mask_size}


@pytest.mark.parametrize("case", ACTION_SPACES.values(), ids=ACTION_SPACES.keys())
def test_every_env_action_belongs_to_the_space(case):
    space = case[0]
    spec = ActionSpec(space)
    batch = spec.to_env(stored_actions(spec, 50, np.random.default_rng(0)))
    for i in range(50):
        assert space.contains(spec.one_env(batch, i)), spec.one_env(batch, i)


def test_discrete_actions_to_env():
    spec = ActionSpec(spaces.Discrete(3, start=-1))
    np.testing.assert_array_equal(spec.to_env(np.array([[0], [2], [1]])), [-1, 1, 0])
    assert spec.one_env(spec.to_env(np.array([[2]])), 0) == 1
    plain = ActionSpec(spaces.Discrete(4))
    np.testing.assert_array_equal(plain.to_env(np.array([[3], [0]])), [3, 0])


def test_box_actions_are_reshaped_and_clipped():
    spec = ActionSpec(spaces.Box(-1.0, 1.0, (2, 3), np.float32))
    stored = stored_actions(spec, 4, np.random.default_rng(0))
    env = spec.to_env(stored)
    assert env.shape == (4, 2, 3) and env.dtype == np.float32
    np.testing.assert_array_equal(env, np.clip(stored, -1.0, 1.0).reshape(4, 2, 3))
    assert (np.abs(stored) > 1).any()  # the clip had something to do


def test_multidiscrete_actions_add_start():
    spec = ActionSpec(ACTION_SPACES["multidiscrete-2d"][0])
    env = spec.to_env(np.array([[1, 2, 3, 0]]))
    np.testing.assert_array_equal(env, [[[1, 3], [2, 0]]])


def test_composite_actions_to_env():
    tuple_spec = ActionSpec(ACTION_SPACES["tuple"][0])
    stored = np.array([[2, 0.5, -3.0], [0, 9.0, 1.0]], np.float32)
    index, box = tuple_spec.to_env(stored)
    np.testing.assert_array_equal(index, [2, 0])
    assert index.dtype == np.int64
    np.testing.assert_array_equal(box, [[0.5, -2.0], [2.0, 1.0]])
    first = tuple_spec.one_env((index, box), 1)
    assert first[0] == 0 and np.array_equal(first[1], [2.0, 1.0])

    dict_spec = ActionSpec(ACTION_SPACES["dict"][0])  # columns: buttons (2), then move (1)
    env = dict_spec.to_env(np.array([[1, 0, 2], [0, 1, 1]]))
    np.testing.assert_array_equal(env["buttons"], [[1, 0], [0, 1]])
    assert env["buttons"].dtype == np.int8
    np.testing.assert_array_equal(env["move"], [2, 1])
    one = dict_spec.one_env(env, 0)
    assert one["move"] == 2 and np.array_equal(one["buttons"], [1, 0])


@pytest.mark.parametrize("space, message", [
    (spaces.Box(0, 5, (2,), np.int64), "unsupported action space Box"),
    (spaces.Text(5), "unsupported action space Text"),
    (spaces.Tuple((spaces.Discrete(2), spaces.Text(3))), r"Text \(\[1\]"),
    (spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Sequence(spaces.Discrete(2))}),
     r"Sequence \(b"),
])
def test_unsupported_action_spaces(space, message):
    with pytest.raises(ConfigError, match=message):
        ActionSpec(space)

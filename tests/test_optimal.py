"""The exact solvers in tests/optimal.py agree with the envs they solve.

Each optimal value is checked against the env itself: rollouts of the optimal policy in the
registered env (time limit included) match the value the recursion gives, and no other policy
tried does better.
"""

import gymnasium as gym
import numpy as np
import pytest

from optimal import (
    CARD_PROB,
    dealer_outcomes,
    evaluate_blackjack_policy,
    evaluate_by_episodes,
    evaluate_tabular_policy,
    exact_policy_value,
    optimal_value,
    solve_blackjack,
    solve_tabular,
)


def _within(estimate, value, sigmas=4.0):
    assert abs(estimate.mean - value) <= sigmas * estimate.stderr, (estimate, value)


# ---------------------------------------------------------------------- tabular tasks
def test_frozenlake_optimal_success_within_the_time_limit():
    solution = solve_tabular("FrozenLake-v1")
    assert solution.horizon == 100
    # Gymnasium's registry notes "optimum = 0.74" for the 100-step limit.
    assert solution.value == pytest.approx(0.744190, abs=1e-6)
    # The best action with the most time left, used at every step, loses a little.
    assert solution.policy_value == pytest.approx(0.740165, abs=1e-6)
    assert solution.policy_value <= solution.value
    # Without the time limit the same task is worth more: the limit is what binds.
    assert solve_tabular("FrozenLake-v1", horizon=5000).value == pytest.approx(14 / 17, abs=1e-9)


def test_frozenlake_value_matches_rollouts_of_the_policy():
    solution = solve_tabular("FrozenLake-v1")
    estimate = evaluate_by_episodes("FrozenLake-v1", lambda s: int(solution.policy[s]), 3000,
                                    seed=3)
    _within(estimate, solution.policy_value)


def test_frozenlake_no_single_change_of_the_policy_does_better():
    solution = solve_tabular("FrozenLake-v1")
    for state in range(16):
        for action in range(4):
            policy = solution.policy.copy()
            policy[state] = action
            value = evaluate_tabular_policy("FrozenLake-v1", lambda s, p=policy: int(p[s]))
            assert value <= solution.policy_value + 1e-12


def test_taxi_optimal_return_equals_rollouts_from_every_initial_state():
    """Taxi's moves are deterministic: the optimal policy's return from each initial state is
    exact, and their average over the initial-state distribution is the optimal value."""
    solution = solve_tabular("Taxi-v4")
    assert solution.horizon == 200
    assert solution.value == pytest.approx(7.93, abs=1e-9)
    assert solution.policy_value == pytest.approx(solution.value, abs=1e-9)
    env = gym.make("Taxi-v4")
    initial = env.unwrapped.initial_state_distrib
    total = 0.0
    for start in np.flatnonzero(initial):
        env.reset(seed=0)
        env.unwrapped.s = int(start)
        obs, episode_return, done = int(start), 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(solution.policy[obs]))
            episode_return += reward
            done = terminated or truncated
        assert terminated  # delivered, not cut off by the time limit
        total += initial[start] * episode_return
    assert total == pytest.approx(solution.value, abs=1e-9)


def test_cliffwalking_optimal_return_is_minus_13():
    solution = solve_tabular("CliffWalking-v1")  # no registered limit: solved to convergence
    assert solution.value == -13.0
    estimate = evaluate_by_episodes("CliffWalking-v1", lambda s: int(solution.policy[s]), 3)
    assert estimate.mean == -13.0 and estimate.stderr == 0.0


def test_tabular_policy_evaluation_ranks_a_worse_policy_below():
    solution = solve_tabular("Taxi-v4")
    rng = np.random.default_rng(0)
    random_policy = rng.integers(0, 6, size=500)
    value = evaluate_tabular_policy("Taxi-v4", lambda s: int(random_policy[s]))
    assert value < solution.value - 100  # mostly -1 per step for 200 steps, and penalties


def test_optimal_value_dispatches_by_task():
    assert optimal_value("CliffWalking-v1") == -13.0
    assert optimal_value("Blackjack-v1") == pytest.approx(solve_blackjack().value)


def test_exact_policy_value_of_the_optimal_policies_is_the_optimum():
    taxi = solve_tabular("Taxi-v4")
    assert exact_policy_value("Taxi-v4", lambda s: taxi.policy[s]) == pytest.approx(taxi.value)
    blackjack = solve_blackjack()
    assert exact_policy_value("Blackjack-v1", blackjack.act) == pytest.approx(blackjack.value)
    # CliffWalking has no time limit: a policy that never arrives has no finite value...
    with pytest.raises(RuntimeError, match="horizon"):
        exact_policy_value("CliffWalking-v1", lambda s: 0)
    # ...until one is given: always "up" from the start earns -1 a step.
    assert evaluate_tabular_policy("CliffWalking-v1", lambda s: 0, horizon=50) == -50.0


# ---------------------------------------------------------------------- Blackjack
def test_dealer_outcomes_are_a_distribution_with_the_known_ace_figures():
    for showing in range(1, 11):
        assert sum(dealer_outcomes(showing).values()) == pytest.approx(1.0, abs=1e-12)
    ace = dealer_outcomes(1)
    assert ace["natural"] == pytest.approx(CARD_PROB[10])  # the hidden card is a ten
    assert "natural" not in dealer_outcomes(7)
    # With an ace showing and no natural, the dealer's 17-20 are equally likely (infinite deck).
    assert ace["17"] == pytest.approx(ace["20"], abs=1e-12)


def test_blackjack_optimal_value_under_each_rule_set():
    sab = solve_blackjack(sab=True)  # Blackjack-v1 as registered
    plain = solve_blackjack(sab=False, natural=False)  # BlackjackEnv's constructor default
    paid = solve_blackjack(sab=False, natural=True)  # a natural wins 1.5
    assert sab.value == pytest.approx(-0.043113, abs=1e-6)
    assert plain.value == pytest.approx(-0.046556, abs=1e-6)
    assert -0.05 < plain.value < -0.04  # the usual figure for hit/stick-only, even-money play
    assert plain.value < sab.value < paid.value
    # The policy is the textbook one (Sutton and Barto, Figure 5.2): stick on hard 13-16
    # against a dealer's 2-6, hit on them against 7 or more; stick on soft 19 and up.
    policy = sab.policy
    assert all(policy[s, d, 0] == 0 for s in range(13, 17) for d in range(2, 7))
    assert all(policy[s, d, 0] == 1 for s in range(12, 17) for d in range(7, 11))
    assert all(policy[s, d, 1] == 0 for s in range(19, 22) for d in range(1, 11))


def test_blackjack_exact_evaluation_of_the_optimal_and_a_fixed_policy():
    solution = solve_blackjack()
    assert evaluate_blackjack_policy(solution.act) == pytest.approx(solution.value, abs=1e-12)

    def stick_on_20(obs):  # the policy of Sutton and Barto's Example 5.1
        return 0 if obs[0] >= 20 else 1

    assert evaluate_blackjack_policy(stick_on_20) < solution.value - 0.2


def test_blackjack_values_match_rollouts_in_the_env():
    solution = solve_blackjack()
    _within(evaluate_by_episodes("Blackjack-v1", solution.act, 12_000, seed=1), solution.value)

    def stick_on_20(obs):
        return 0 if obs[0] >= 20 else 1

    _within(evaluate_by_episodes("Blackjack-v1", stick_on_20, 3_000, seed=2),
            evaluate_blackjack_policy(stick_on_20))


def test_blackjack_rule_difference_matches_paired_rollouts():
    """The same policy and seed give the same hands under both rule sets; only a natural
    against a dealer's three-card 21 scores differently, so the paired difference has a
    small variance and checks the rule handling to about 20%."""
    policy = solve_blackjack().act
    with_sab = evaluate_by_episodes("Blackjack-v1", policy, 8_000, seed=4, sab=True)
    without = evaluate_by_episodes("Blackjack-v1", policy, 8_000, seed=4, sab=False)
    difference = with_sab.returns - without.returns
    assert set(np.unique(difference)) <= {0.0, 1.0}
    exact = evaluate_blackjack_policy(policy, sab=True) - evaluate_blackjack_policy(policy,
                                                                                    sab=False)
    stderr = difference.std(ddof=1) / np.sqrt(len(difference))
    assert exact == pytest.approx(0.003443, abs=1e-6)
    assert abs(difference.mean() - exact) <= 4 * stderr

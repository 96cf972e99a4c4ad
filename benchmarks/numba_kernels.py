"""Compiled kernels for the CPU fast path: acting, and PPO's minibatch step for an MLP.

A measured prototype (benchmarks/results/cpu-fast-path-research.md), not used by the engine:
about 4x faster per call, but ~60 s of compilation on a first run and not bit-identical to
the NumPy fast path. Run its tests with `pytest benchmarks/test_numba_kernels.py`.

Pure functions over flat float32 parameter vectors, compiled by Numba. At the sizes PPO uses
on a CPU (a 64-64 MLP, batch 1 to act, 64 per minibatch) NumPy spends most of its time
between its calls (~1 us each, ~40 per step), not in them; a compiled loop has no such
overhead. The math is the plain formula of learner.py and objective.py, pinned to it by
benchmarks/test_numba_kernels.py.

Parameters are laid out in the order of `ActorCritic.parameters()` (policy.py): the
Gaussian's log std (a module's own parameters come before its children's), then each
Linear's weight (n_out, n_in) row-major and its bias: actor trunk, critic trunk (separate
networks only), policy head, value head. `mlp_layout` gives the offsets.

Every kernel is single-threaded with a fixed summation order: the same inputs give the same
bits, run after run. The only fast-math licence is contraction (a * b + c as one fused
multiply-add, rounded once), which every x86-64 CPU since 2013 and every ARM64 CPU has;
sums are never reordered, so results do not depend on the CPU's vector width. Division
follows NumPy's error model (x / 0 is inf, not an exception), which lets LLVM vectorize.
Compiled code is cached on disk (`cache=True`), so only the first run on a machine pays
the compilation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

TANH, RELU = 0, 1
ACTIVATIONS = {"tanh": TANH, "relu": RELU}
LOG_2PI = math.log(2.0 * math.pi)

_jit = numba.njit(cache=True, error_model="numpy", fastmath={"contract"}, nogil=True)


class MLPLayout(NamedTuple):
    """Where each layer lives in the flat parameter vector.

    Each row of `actor`, `critic` is one Linear: (weight offset, bias offset, n_in, n_out);
    `policy_head` and `value_head` are one such row each. `critic` has no rows when the
    trunk is shared. `log_std` is the offset of the Gaussian's log std, -1 for Categorical.
    """

    actor: np.ndarray
    critic: np.ndarray
    policy_head: np.ndarray
    value_head: np.ndarray
    log_std: int
    size: int


class StepStats(NamedTuple):
    """Diagnostics of one minibatch, from the forward pass before the update."""

    approx_kl: float
    clipfrac: float
    policy_loss: float
    value_loss: float
    entropy: float


class PPOCoefs(NamedTuple):
    """The loss's hyperparameters, as the kernels take them."""

    clip_eps: float
    clip_value: bool
    value_clip_eps: float
    vf_coef: float
    ent_coef: float
    normalize_advantages: bool  # per minibatch (zero mean, unit std)
    old_from_current: bool  # the ablation with pi_old taken from the current weights


class AdamCoefs(NamedTuple):
    lr: float
    beta1: float
    beta2: float
    eps: float
    max_grad_norm: float  # global gradient-norm clip; 0 turns it off


def mlp_layout(obs_dim: int, hidden_sizes: list[int], action_dim: int, shared_trunk: bool,
               gaussian: bool) -> MLPLayout:
    """Offsets of an actor-critic MLP's parameters, in `ActorCritic.parameters()` order."""
    log_std = 0 if gaussian else -1
    offset = action_dim if gaussian else 0

    def linear(n_in: int, n_out: int) -> list[int]:
        nonlocal offset
        row = [offset, offset + n_in * n_out, n_in, n_out]
        offset += n_in * n_out + n_out
        return row

    def trunk() -> np.ndarray:
        widths = [obs_dim, *hidden_sizes]
        rows = [linear(n_in, n_out) for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)]
        return np.array(rows, np.int64).reshape(-1, 4)

    actor = trunk()
    critic = np.zeros((0, 4), np.int64) if shared_trunk else trunk()
    policy_head = np.array(linear(hidden_sizes[-1], action_dim), np.int64)
    value_head = np.array(linear(hidden_sizes[-1], 1), np.int64)
    return MLPLayout(actor, critic, policy_head, value_head, log_std, offset)


# ------------------------------------------------------------------ tanh
# tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 (beyond, tanh rounds to +-1 in float32), evaluated
# in float64: libm's tanh is a function call LLVM cannot vectorize (~17 ns an element against
# ~0.7 here). P and Q were fitted by iteratively reweighted least squares on the relative
# error over [0, 9] (max 2.1e-8); rounded to float32 the result is within 1 ulp of tanh.
_P = (0.9999999794756093, 0.1338101464121795, 0.0034955750176188446, 2.0608870099116668e-05,
      1.3354380316155149e-08)
_Q = (1.0, 0.4671433024516937, 0.025876932375463905, 0.00032856134727260884,
      7.776440269683595e-07)


@_jit
def tanh(x: float) -> float:
    v = min(max(np.float64(x), -9.0), 9.0)
    s = v * v
    p = (((_P[4] * s + _P[3]) * s + _P[2]) * s + _P[1]) * s + _P[0]
    q = (((_Q[4] * s + _Q[3]) * s + _Q[2]) * s + _Q[1]) * s + _Q[0]
    return v * p / q


@_jit
def tanh_array(x: np.ndarray) -> np.ndarray:
    """`tanh` over a float32 array (for tests and for NumPy code that wants the same bits)."""
    out = np.empty_like(x)
    flat, out_flat = x.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        out_flat[i] = tanh(flat[i])
    return out


# ------------------------------------------------------------------ dense layers
# Two small matrix products cover the forward and backward passes. Each runs its innermost
# loop along a contiguous output row, which LLVM vectorizes without reordering any sum, and
# takes four rows at a time so that each row of the right-hand matrix is loaded once for four.
@_jit
def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out += a @ b, for a (M, K), b (K, N), out (M, N)."""
    m, n = a.shape[0], b.shape[1]
    for i in range(0, m - m % 4, 4):
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        for k in range(a.shape[1]):
            a0, a1, a2, a3 = a[i, k], a[i + 1, k], a[i + 2, k], a[i + 3, k]
            row = b[k]
            for j in range(n):
                o0[j] += a0 * row[j]
                o1[j] += a1 * row[j]
                o2[j] += a2 * row[j]
                o3[j] += a3 * row[j]
    for i in range(m - m % 4, m):
        o = out[i]
        for k in range(a.shape[1]):
            a0 = a[i, k]
            row = b[k]
            for j in range(n):
                o[j] += a0 * row[j]


@_jit
def _matmul_tn(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out += a.T @ b, for a (K, M), b (K, N), out (M, N)."""
    m, n = a.shape[1], b.shape[1]
    for i in range(0, m - m % 4, 4):
        o0, o1, o2, o3 = out[i], out[i + 1], out[i + 2], out[i + 3]
        for k in range(a.shape[0]):
            a0, a1, a2, a3 = a[k, i], a[k, i + 1], a[k, i + 2], a[k, i + 3]
            row = b[k]
            for j in range(n):
                o0[j] += a0 * row[j]
                o1[j] += a1 * row[j]
                o2[j] += a2 * row[j]
                o3[j] += a3 * row[j]
    for i in range(m - m % 4, m):
        o = out[i]
        for k in range(a.shape[0]):
            a0 = a[k, i]
            row = b[k]
            for j in range(n):
                o[j] += a0 * row[j]


@_jit
def _activate(h: np.ndarray, activation: int) -> None:
    if activation == TANH:
        for i in range(h.shape[0]):
            row = h[i]
            for j in range(row.size):
                row[j] = tanh(row[j])
    else:
        for i in range(h.shape[0]):
            row = h[i]
            for j in range(row.size):
                if row[j] < 0.0:  # NaN passes through, as in torch.relu
                    row[j] = 0.0


@_jit
def _dense(x: np.ndarray, weight_t: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:
    """out = x @ weight_t + bias, with weight_t (n_in, n_out)."""
    for i in range(x.shape[0]):
        out[i] = bias
    _matmul(x, weight_t, out)


@_jit
def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) in eight interleaved partial sums, added in a fixed order: vectorizable
    without letting the compiler reorder anything."""
    n = a.size
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
    for k in range(0, n - n % 8, 8):
        s0 += a[k] * b[k]
        s1 += a[k + 1] * b[k + 1]
        s2 += a[k + 2] * b[k + 2]
        s3 += a[k + 3] * b[k + 3]
        s4 += a[k + 4] * b[k + 4]
        s5 += a[k + 5] * b[k + 5]
        s6 += a[k + 6] * b[k + 6]
        s7 += a[k + 7] * b[k + 7]
    for k in range(n - n % 8, n):
        s0 += a[k] * b[k]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@_jit
def _linear(theta: np.ndarray, layer: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x @ W.T + b for a Linear of the flat parameters. Narrow layers (the heads) take a dot
    product per output; wide ones a product with W transposed (a copy: ~1 us for 64x64)."""
    w_off, b_off, n_in, n_out = layer
    weight = theta[w_off:w_off + n_in * n_out].reshape(n_out, n_in)
    bias = theta[b_off:b_off + n_out]
    out = np.empty((x.shape[0], n_out), np.float32)
    if n_out < 16:
        for i in range(x.shape[0]):
            for j in range(n_out):
                out[i, j] = bias[j] + _dot(x[i], weight[j])
        return out
    weight_t = np.empty((n_in, n_out), np.float32)
    for j in range(n_out):
        for k in range(n_in):
            weight_t[k, j] = weight[j, k]
    _dense(x, weight_t, bias, out)
    return out


@_jit
def _trunk_forward(theta: np.ndarray, layers: np.ndarray, activation: int,
                   x: np.ndarray) -> list:
    """The activations of each hidden layer of a trunk (input not included)."""
    acts = []
    h = x
    for layer in layers:
        out = _linear(theta, layer, h)
        _activate(out, activation)
        acts.append(out)
        h = out
    return acts


@_jit
def _linear_backward(theta: np.ndarray, grad: np.ndarray, layer: np.ndarray, x: np.ndarray,
                     d_out: np.ndarray, want_input_grad: bool) -> np.ndarray:
    """Add a Linear's weight and bias gradients into `grad`; return dLoss/dx (or an empty
    array when not wanted)."""
    w_off, b_off, n_in, n_out = layer
    _matmul_tn(d_out, x, grad[w_off:w_off + n_in * n_out].reshape(n_out, n_in))
    d_bias = grad[b_off:b_off + n_out]
    for i in range(d_out.shape[0]):
        d_bias += d_out[i]
    if not want_input_grad:
        return np.zeros((0, n_in), np.float32)
    d_x = np.zeros((x.shape[0], n_in), np.float32)
    _matmul(d_out, theta[w_off:w_off + n_in * n_out].reshape(n_out, n_in), d_x)
    return d_x


@_jit
def _trunk_backward(theta: np.ndarray, grad: np.ndarray, layers: np.ndarray, activation: int,
                    x: np.ndarray, acts: list, d_top: np.ndarray) -> None:
    """Backpropagate dLoss/d(last hidden layer) through a trunk into `grad`."""
    d = d_top
    for idx in range(len(layers) - 1, -1, -1):
        a = acts[idx]
        for i in range(a.shape[0]):
            d_row, a_row = d[i], a[i]
            if activation == TANH:
                for j in range(a_row.size):
                    d_row[j] *= np.float32(1.0) - a_row[j] * a_row[j]
            else:
                for j in range(a_row.size):
                    d_row[j] = d_row[j] if a_row[j] > 0.0 else np.float32(0.0)
        layer_input = acts[idx - 1] if idx > 0 else x
        d = _linear_backward(theta, grad, layers[idx], layer_input, d, idx > 0)


# ------------------------------------------------------------------ acting
class PolicySnapshot(NamedTuple):
    """pi_old for acting: the actor's layers and policy head with weights stored (n_in,
    n_out), so that one observation's forward pass is a few vectorized row updates."""

    weights: np.ndarray  # flat float32
    layers: np.ndarray  # (L + 1, 4) int64 rows into `weights`; the last is the policy head
    activation: int
    std: np.ndarray  # Gaussian std per action dimension; empty for Categorical


def policy_snapshot(theta: np.ndarray, layout: MLPLayout, activation: int) -> PolicySnapshot:
    """Copy the actor out of the flat parameters (once per update: the promotion of pi_old)."""
    rows = np.concatenate([layout.actor, layout.policy_head[None]])
    weights = np.empty(sum(int(r[2] * r[3] + r[3]) for r in rows), np.float32)
    layers = np.empty_like(rows)
    offset = 0
    for i, (w_off, b_off, n_in, n_out) in enumerate(rows):
        n = n_in * n_out
        weights[offset:offset + n] = theta[w_off:w_off + n].reshape(n_out, n_in).T.reshape(-1)
        weights[offset + n:offset + n + n_out] = theta[b_off:b_off + n_out]
        layers[i] = (offset, offset + n, n_in, n_out)
        offset += n + n_out
    n_actions = int(layout.policy_head[3])
    std = (np.exp(theta[layout.log_std:layout.log_std + n_actions]) if layout.log_std >= 0
           else np.zeros(0, np.float32))
    return PolicySnapshot(weights, layers, activation, std)


@_jit
def _policy_output(weights: np.ndarray, layers: np.ndarray, activation: int,
                   obs: np.ndarray) -> np.ndarray:
    h = obs
    for idx in range(len(layers)):
        w_off, b_off, n_in, n_out = layers[idx]
        out = np.empty((obs.shape[0], n_out), np.float32)
        _dense(h, weights[w_off:w_off + n_in * n_out].reshape(n_in, n_out),
               weights[b_off:b_off + n_out], out)
        if idx < len(layers) - 1:
            _activate(out, activation)
        h = out
    return h


@_jit
def act_categorical(weights: np.ndarray, layers: np.ndarray, activation: int, obs: np.ndarray,
                    gumbel: np.ndarray) -> np.ndarray:
    """Actions for a (N, obs_dim) batch: argmax(logits + Gumbel noise), an exact sample of
    softmax(logits) (Gumbel-max). Zero noise gives the mode."""
    logits = _policy_output(weights, layers, activation, obs)
    actions = np.empty(obs.shape[0], np.int64)
    for i in range(obs.shape[0]):
        best, best_value = 0, logits[i, 0] + gumbel[i, 0]
        for a in range(1, logits.shape[1]):
            value = logits[i, a] + gumbel[i, a]
            if value > best_value:
                best, best_value = a, value
        actions[i] = best
    return actions


@_jit
def act_gaussian(weights: np.ndarray, layers: np.ndarray, activation: int, std: np.ndarray,
                 obs: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Actions for a (N, obs_dim) batch: mean + std * standard-normal noise (unclipped).
    Zero noise gives the mean."""
    mean = _policy_output(weights, layers, activation, obs)
    for i in range(obs.shape[0]):
        for a in range(mean.shape[1]):
            mean[i, a] += std[a] * normal[i, a]
    return mean


def act(snapshot: PolicySnapshot, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Sample actions for a (N, obs_dim) float32 batch given (N, n_actions) noise: Gumbel
    for Categorical, standard normal for Gaussian (see InferencePolicy.noise)."""
    if snapshot.std.size:
        return act_gaussian(snapshot.weights, snapshot.layers, snapshot.activation,
                            snapshot.std, obs, noise)
    return act_categorical(snapshot.weights, snapshot.layers, snapshot.activation, obs, noise)


# ------------------------------------------------------------------ the minibatch loss
@_jit
def _forward(theta: np.ndarray, actor: np.ndarray, critic: np.ndarray,
             policy_head: np.ndarray, value_head: np.ndarray, activation: int, obs: np.ndarray):
    actor_acts = _trunk_forward(theta, actor, activation, obs)
    critic_acts = (_trunk_forward(theta, critic, activation, obs) if len(critic)
                   else actor_acts)
    out = _linear(theta, policy_head, actor_acts[-1])
    values = _linear(theta, value_head, critic_acts[-1])
    return actor_acts, critic_acts, out, values


@_jit
def _gather(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    out = np.empty((index.size, *array.shape[1:]), array.dtype)
    for i in range(index.size):
        out[i] = array[index[i]]
    return out


@_jit
def _surrogate_and_value(logp: np.ndarray, values: np.ndarray, index: np.ndarray,
                         logp_old: np.ndarray, old_values: np.ndarray,
                         advantages: np.ndarray, returns: np.ndarray, coefs):
    """The clipped surrogate and the (clipped) value loss of a minibatch; their gradients
    in logp and in the values; approx KL and the clip fraction."""
    n = index.size
    adv = np.empty(n)
    for i in range(n):
        adv[i] = advantages[index[i]]
    if coefs.normalize_advantages and n > 1:
        mean = adv.mean()
        std = math.sqrt(((adv - mean) ** 2).sum() / (n - 1))
        adv = (adv - mean) / (std + 1e-8)
    low, high = 1.0 - coefs.clip_eps, 1.0 + coefs.clip_eps
    d_logp = np.empty(n)
    d_values = np.empty(n)
    kl = clipped_count = loss_pi = loss_v = 0.0
    for i in range(n):
        j = index[i]
        log_ratio = 0.0 if coefs.old_from_current else np.float64(logp[i]) - logp_old[j]
        ratio = math.exp(log_ratio)
        surrogate = ratio * adv[i]
        clipped = min(max(ratio, low), high) * adv[i]
        loss_pi -= min(surrogate, clipped)
        kl += (ratio - 1.0) - log_ratio
        clipped_count += abs(ratio - 1.0) > coefs.clip_eps
        # min() passes gradient only where the unclipped term is the smaller (or equal) one.
        d_logp[i] = -adv[i] * ratio / n if surrogate <= clipped else 0.0
        error = np.float64(values[i, 0]) - returns[j]
        if coefs.clip_value:
            delta = np.float64(values[i, 0]) - old_values[j]
            eps = coefs.value_clip_eps
            clipped_error = old_values[j] + min(max(delta, -eps), eps) - returns[j]
            # max() passes gradient through the larger term; the clipped one only inside.
            if error * error >= clipped_error * clipped_error:
                loss_v += error * error
                d_values[i] = error
            else:
                loss_v += clipped_error * clipped_error
                d_values[i] = clipped_error if abs(delta) <= eps else 0.0
        else:
            loss_v += error * error
            d_values[i] = error
        d_values[i] *= 2.0 * coefs.vf_coef / n
    return loss_pi / n, loss_v / n, kl / n, clipped_count / n, d_logp, d_values


@_jit
def _backward(theta, grad, actor, critic, policy_head, value_head, activation, obs,
              actor_acts, critic_acts, d_out, d_values) -> None:
    grad[:] = 0.0
    d_actor = _linear_backward(theta, grad, policy_head, actor_acts[-1], d_out, True)
    d_critic = _linear_backward(theta, grad, value_head, critic_acts[-1],
                                d_values.astype(np.float32).reshape(-1, 1), True)
    if len(critic):
        _trunk_backward(theta, grad, critic, activation, obs, critic_acts, d_critic)
    else:
        d_actor += d_critic
    _trunk_backward(theta, grad, actor, activation, obs, actor_acts, d_actor)


@_jit
def ppo_grad_categorical(theta, grad, actor, critic, policy_head, value_head, activation,
                         obs, actions, logp_old, old_values, advantages, returns, index,
                         coefs):
    """Forward and backward of PPO's loss on the minibatch `index` of a rollout, Categorical
    policy. Writes dLoss/dtheta into `grad`; returns the minibatch's statistics."""
    x = _gather(obs, index)
    actor_acts, critic_acts, logits, values = _forward(
        theta, actor, critic, policy_head, value_head, activation, x)
    n, n_actions = logits.shape
    probs = np.empty((n, n_actions))
    log_probs = np.empty((n, n_actions))
    logp = np.empty(n)
    entropy = np.empty(n)
    for i in range(n):
        top = logits[i].max()
        total = 0.0
        for a in range(n_actions):
            probs[i, a] = math.exp(logits[i, a] - top)
            total += probs[i, a]
        log_total = math.log(total)
        h = 0.0
        for a in range(n_actions):
            log_probs[i, a] = logits[i, a] - top - log_total
            probs[i, a] /= total
            h -= probs[i, a] * log_probs[i, a]
        logp[i] = log_probs[i, actions[index[i]]]
        entropy[i] = h
    loss_pi, loss_v, kl, clipfrac, d_logp, d_values = _surrogate_and_value(
        logp, values, index, logp_old, old_values, advantages, returns, coefs)
    # dlogp/dlogits = onehot - p; the entropy bonus -c_e mean(H): dH/dlogits = -p (log p + H).
    d_out = np.empty((n, n_actions), np.float32)
    for i in range(n):
        for a in range(n_actions):
            d_out[i, a] = (-probs[i, a] * d_logp[i]
                           + coefs.ent_coef / n * probs[i, a] * (log_probs[i, a] + entropy[i]))
        d_out[i, actions[index[i]]] += d_logp[i]
    _backward(theta, grad, actor, critic, policy_head, value_head, activation, x,
              actor_acts, critic_acts, d_out, d_values)
    return kl, clipfrac, loss_pi, loss_v, entropy.mean()


@_jit
def ppo_grad_gaussian(theta, grad, actor, critic, policy_head, value_head, log_std_offset,
                      activation, obs, actions, logp_old, old_values, advantages, returns,
                      index, coefs):
    """As `ppo_grad_categorical`, for a diagonal Gaussian policy with a state-independent
    log std."""
    x = _gather(obs, index)
    actor_acts, critic_acts, mean, values = _forward(
        theta, actor, critic, policy_head, value_head, activation, x)
    n, n_actions = mean.shape
    log_std = theta[log_std_offset:log_std_offset + n_actions]
    z = np.empty((n, n_actions))
    logp = np.empty(n)
    for i in range(n):
        lp = 0.0
        for a in range(n_actions):
            z[i, a] = (np.float64(actions[index[i], a]) - mean[i, a]) * math.exp(-log_std[a])
            lp += -0.5 * z[i, a] * z[i, a] - log_std[a] - 0.5 * LOG_2PI
        logp[i] = lp
    entropy = 0.0
    for a in range(n_actions):
        entropy += 0.5 + 0.5 * LOG_2PI + log_std[a]
    loss_pi, loss_v, kl, clipfrac, d_logp, d_values = _surrogate_and_value(
        logp, values, index, logp_old, old_values, advantages, returns, coefs)
    # dlogp/dmean = z / std; dlogp/dlog_std = z^2 - 1; dH/dlog_std = 1.
    d_out = np.empty((n, n_actions), np.float32)
    for i in range(n):
        for a in range(n_actions):
            d_out[i, a] = d_logp[i] * z[i, a] * math.exp(-log_std[a])
    _backward(theta, grad, actor, critic, policy_head, value_head, activation, x,
              actor_acts, critic_acts, d_out, d_values)
    for a in range(n_actions):
        total = 0.0
        for i in range(n):
            total += d_logp[i] * (z[i, a] * z[i, a] - 1.0)
        grad[log_std_offset + a] = total - coefs.ent_coef
    return kl, clipfrac, loss_pi, loss_v, entropy


# ------------------------------------------------------------------ the update
@_jit
def grad_norm(grad: np.ndarray) -> float:
    total = 0.0
    for g in grad:
        total += np.float64(g) * g
    return math.sqrt(total)


@_jit
def clip_and_adam(theta: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray,
                  step: int, coefs) -> float:
    """Global gradient-norm clip, then Adam step number `step` (from 1), in place, as
    torch.optim.Adam computes it. Returns the norm before clipping; when it is not finite
    nothing is changed."""
    norm = grad_norm(grad)
    if not math.isfinite(norm):
        return norm
    scale = np.float32(1.0)
    if coefs.max_grad_norm > 0:
        scale = np.float32(min(coefs.max_grad_norm / (norm + 1e-6), 1.0))
    # Scalars rounded to float32 from float64 and each expression in torch's order; torch's
    # vectorized kernels fuse some multiply-adds, so the two can differ in the last bit.
    weight1, beta2 = np.float32(1.0 - coefs.beta1), np.float32(coefs.beta2)
    weight2 = np.float32(1.0 - coefs.beta2)
    minus_step_size = np.float32(-coefs.lr / (1.0 - coefs.beta1 ** step))
    bias_correction2_sqrt = np.float32((1.0 - coefs.beta2 ** step) ** 0.5)
    eps = np.float32(coefs.eps)
    for i in range(theta.size):
        g = grad[i] * scale
        m[i] += weight1 * (g - m[i])  # torch's lerp for a weight below 0.5
        v[i] = v[i] * beta2 + weight2 * g * g
        theta[i] += minus_step_size * m[i] / (np.sqrt(v[i]) / bias_correction2_sqrt + eps)
    return norm


def ppo_grad(theta: np.ndarray, grad: np.ndarray, layout: MLPLayout, activation: int,
             obs: np.ndarray, actions: np.ndarray, logp_old: np.ndarray,
             old_values: np.ndarray, advantages: np.ndarray, returns: np.ndarray,
             index: np.ndarray, coefs: PPOCoefs) -> StepStats:
    """PPO's loss gradient on the minibatch `index` into `grad`, with its statistics.

    theta, grad: flat float32; obs (T, obs_dim) float32; actions (T,) int64 or
    (T, n_actions) float32; logp_old, old_values, advantages, returns (T,) float32;
    index (n,) int64.
    """
    if layout.log_std >= 0:
        stats = ppo_grad_gaussian(theta, grad, layout.actor, layout.critic, layout.policy_head,
                                  layout.value_head, layout.log_std, activation, obs, actions,
                                  logp_old, old_values, advantages, returns, index, coefs)
    else:
        stats = ppo_grad_categorical(theta, grad, layout.actor, layout.critic,
                                     layout.policy_head, layout.value_head, activation, obs,
                                     actions, logp_old, old_values, advantages, returns, index,
                                     coefs)
    return StepStats(*stats)

"""Batched L-BFGS: K independent problems minimised at once, for the cohort's finishing phase.

Why: Adam at a constant (or decayed) lr stalls at an optimiser floor that does not depend on
model size (~5e-3 RMSE on smooth targets), which flattens every scaling curve into a line
that says nothing about capacity. A quasi-Newton finish in float64 takes small nets to
their capacity floor in a few hundred full-batch iterations (Michaud, Liu & Tegmark 2023,
"Precision Machine Learning"). torch.optim.LBFGS optimises one parameter set; here every
quantity carries a leading member axis K, so a whole cohort finishes in one loop and
members never mix (each has its own history, step size and convergence test).

Algorithm (Nocedal & Wright, alg. 7.4/7.5): two-loop recursion over a ring of the last
``history`` (s, y) pairs, H0 = (sᵀy / yᵀy)·I, backtracking Armijo line search (c1 = 1e-4,
step halved up to ``max_halvings`` times). A pair with sᵀy ≤ 0 is stored with ρ = 0, which
makes it a no-op in both loops, so members can skip pairs independently. A member stops
(its direction is zeroed) once no step decreases its loss or its relative decrease falls
below ``tol``.
"""

from __future__ import annotations

from typing import Callable

import torch

# (points [K', P], which members they are [K'] as indices into x0's rows) → losses [K']
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def value_and_grad(loss_fn: LossFn, x: torch.Tensor, members: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member losses ``[K']`` and gradients ``[K', P]`` (the sum's gradient is per
    member, since member k's loss depends only on row k)."""
    with torch.enable_grad():
        q = x.detach().requires_grad_(True)
        f = loss_fn(q, members)
        (g,) = torch.autograd.grad(f.sum(), q)
    return f.detach(), g


@torch.no_grad()
def minimize(loss_fn: LossFn, x0: torch.Tensor, *, iterations: int, history: int = 20,
             tol: float = 1e-10, max_halvings: int = 25,
             on_iteration: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise K problems from ``x0 [K, P]``; returns (x, f, active mask at the end).

    ``loss_fn(points, members)`` returns the losses of ``points [K', P]``, the current
    points of members ``members [K']`` (row indices of ``x0``): passes after the first of
    an iteration evaluate only the members that need them.

    ``on_iteration(it, x, f)`` is called after every iteration (it = 1…) with the current
    points and losses — e.g. to evaluate validation error and keep the best weights.
    """
    x = x0.clone()
    k, p = x.shape
    m = max(1, int(history))
    S = x.new_zeros(k, m, p)
    Y = x.new_zeros(k, m, p)
    rho = x.new_zeros(k, m)
    gamma = x.new_ones(k)
    active = torch.ones(k, dtype=torch.bool, device=x.device)
    everyone = torch.arange(k, device=x.device)
    f, g = value_and_grad(loss_fn, x, everyone)
    for it in range(1, iterations + 1):
        live = active.nonzero().squeeze(1)      # converged members cost nothing more
        # two-loop recursion, newest → oldest, then back
        q = g.clone()
        alpha = x.new_zeros(k, m)
        order = [(it - 2 - j) % m for j in range(min(it - 1, m))]
        for i in order:
            alpha[:, i] = rho[:, i] * _dot(S[:, i], q)
            q -= alpha[:, i, None] * Y[:, i]
        r = gamma[:, None] * q
        for i in reversed(order):
            beta = rho[:, i] * _dot(Y[:, i], r)
            r += S[:, i] * (alpha[:, i] - beta)[:, None]
        d = -r
        slope = _dot(g, d)
        bad = ~(slope < 0)                       # not a descent direction: steepest descent
        if bad.any():
            d[bad] = -g[bad]
            slope = torch.where(bad, -_dot(g, g), slope)
        d[~active] = 0
        # backtracking Armijo line search, per member; the first trial point is evaluated
        # with its gradient (usually accepted: one pass per iteration, as torch's LBFGS).
        # Later passes evaluate only the members that still need them: in a batch, one
        # member's backtracking must not cost a forward pass of all K.
        t = torch.where(torch.full_like(f, it == 1, dtype=torch.bool),
                        (1.0 / g.abs().sum(-1).clamp_min(1e-12)).clamp(max=1.0), torch.ones_like(f))
        trial = x + t[:, None] * d
        ft, gt = f.clone(), g.clone()
        ft[live], gt[live] = value_and_grad(loss_fn, trial[live], live)
        ok = active & torch.isfinite(ft) & (ft <= f + 1e-4 * t * slope)
        x_new = torch.where(ok[:, None], trial, x)
        f_new = torch.where(ok, ft, f)
        g_new = torch.where(ok[:, None], gt, g)
        accepted = ok | ~active
        late = torch.zeros_like(ok)              # accepted after backtracking: grad needed
        for _ in range(max_halvings):
            need = (~accepted).nonzero().squeeze(1)
            if need.numel() == 0:
                break
            t[need] *= 0.5
            trial_n = x[need] + t[need, None] * d[need]
            ft_n = loss_fn(trial_n, need)
            ok_n = torch.isfinite(ft_n) & (ft_n <= f[need] + 1e-4 * t[need] * slope[need])
            got = need[ok_n]
            x_new[got], f_new[got] = trial_n[ok_n], ft_n[ok_n]
            accepted[got] = True
            late[got] = True
        redo = late.nonzero().squeeze(1)
        if redo.numel():
            g_new[redo] = value_and_grad(loss_fn, x_new[redo], redo)[1]
        stalled = active & ~accepted             # no decrease found: converged (or stuck)
        s, y = x_new - x, g_new - g
        sy = _dot(s, y)
        good = active & accepted & (sy > 1e-12 * _dot(y, y).clamp_min(1e-300))
        slot = (it - 1) % m
        S[:, slot], Y[:, slot] = s, y
        rho[:, slot] = torch.where(good, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        gamma = torch.where(good, sy / _dot(y, y).clamp_min(1e-300), gamma)
        small = (f - f_new) <= tol * f.abs().clamp_min(1e-30)
        active = active & ~stalled & ~(accepted & small)
        x, f, g = x_new, f_new, torch.where(active[:, None], g_new, g)
        if on_iteration is not None:
            on_iteration(it, x, f)
        if not bool(active.any()):
            break
    return x, f, active

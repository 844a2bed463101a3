"""Full-batch optimizers beyond L-BFGS: nonlinear conjugate gradient and Newton's method.

Both follow ``torch.optim.LBFGS``'s protocol: ``step(closure)`` runs up to ``max_iter``
iterations, calling ``closure()`` (zero the gradients, compute the loss, back-propagate, return
the loss) whenever it needs the loss and gradient at a new point. Newton also calls
``closure(backward=False)``, which returns the loss with its graph and leaves the gradients
alone, so that it can differentiate the gradient again (Hessian-vector products).

The line search is torch's own strong-Wolfe search (the one L-BFGS uses; private_api.strong_wolfe), and the iterations are
those of Nocedal & Wright, *Numerical Optimization* (2006): chapter 5.2 for nonlinear CG
(Fletcher-Reeves and Polak-Ribiere+), chapters 3.4 and 7.1 for damped Newton and Newton-CG.
`scipy.optimize.minimize` (methods ``CG`` and ``Newton-CG``) is the reference they are tested
against. Each step's counts (iterations, loss-and-gradient evaluations, Hessian-vector
products) are kept in the optimizer's state, so they survive a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dltrain.private_api import strong_wolfe

Closure = Callable[..., torch.Tensor]


class _FullBatch(torch.optim.Optimizer):
    """The flat-parameter bookkeeping both methods share (one parameter group, like LBFGS)."""

    def __init__(self, params, defaults: dict) -> None:
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} does not support per-parameter options")
        self._params = [p for p in self.param_groups[0]["params"] if p.requires_grad]

    @property
    def counts(self) -> dict:
        """The method's state (like LBFGS, kept with the first parameter, so state_dict saves it):
        n_iter, func_evals (loss-and-gradient evaluations), hess_evals (Hessian-vector products)."""
        state = self.state[self._params[0]]
        for k in ("n_iter", "func_evals", "hess_evals"):
            state.setdefault(k, 0)
        return state

    def _flat_grad(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self._params])

    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self._params])

    @torch.no_grad()
    def _set(self, flat: torch.Tensor) -> None:
        torch._foreach_copy_(self._params, [v.view_as(p) for v, p in zip(flat.split([p.numel() for p in self._params]), self._params, strict=True)])

    def _decay(self, flat: torch.Tensor) -> float:
        """The weight-decay term of the objective, wd/2 * |w|^2 (part of what is minimised)."""
        wd = self.param_groups[0]["weight_decay"]
        return 0.5 * wd * float(flat.pow(2).sum()) if wd else 0.0

    def _evaluate(self, closure: Closure) -> tuple[float, torch.Tensor]:
        """Loss and flat gradient at the current parameters, weight decay included."""
        with torch.enable_grad():
            loss = float(closure().detach())
        self.counts["func_evals"] += 1
        grad = self._flat_grad()
        wd = self.param_groups[0]["weight_decay"]
        if wd:
            flat = self._flat_params()
            return loss + self._decay(flat), grad.add(flat, alpha=wd)
        return loss, grad

    def _line_search(self, closure: Closure, x: torch.Tensor, t: float, d: torch.Tensor, f: float, g: torch.Tensor, gtd: torch.Tensor):
        """Torch's strong-Wolfe search along `d` from `x`; the parameters end at the point it accepts."""

        def obj_func(x, t, d):
            self._set(x + t * d)
            return self._evaluate(closure)

        group = self.param_groups[0]
        f_new, g_new, t, _ = strong_wolfe()(obj_func, x, t, d, f, g, gtd, c2=group["c2"], tolerance_change=group["tolerance_change"], max_ls=group["max_ls"])
        self._set(x + t * d)
        return float(f_new), g_new, float(t)


class ConjugateGradient(_FullBatch):
    """Nonlinear conjugate gradient with a strong-Wolfe line search.

    ``beta``: "pr+" (Polak-Ribiere, clipped at zero: restarts itself where directions lose
    conjugacy) or "fr" (Fletcher-Reeves). The first trial step of each line search is scipy's:
    min(lr, 2.02 (f_k - f_{k-1}) / g_k.d_k), the step that would repeat the last decrease.
    The search direction carries over from one ``step`` to the next (one step per epoch)."""

    def __init__(self, params, lr: float = 1.0, max_iter: int = 20, beta: str = "pr+", tolerance_grad: float = 1e-5, tolerance_change: float = 1e-9, weight_decay: float = 0.0, c2: float = 0.4, max_ls: int = 25) -> None:
        if beta not in ("pr+", "fr"):
            raise ValueError(f"beta must be 'pr+' or 'fr', not {beta!r}")
        super().__init__(params, dict(lr=lr, max_iter=max_iter, beta=beta, tolerance_grad=tolerance_grad, tolerance_change=tolerance_change, weight_decay=weight_decay, c2=c2, max_ls=max_ls))

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:
        group, state = self.param_groups[0], self.counts
        f, g = self._evaluate(closure)
        first = f
        if g.abs().max() <= group["tolerance_grad"] or group["lr"] <= 0:  # converged, or a schedule annealed the rate to 0
            return torch.tensor(first)
        d, g_prev, f_prev = state.get("d"), state.get("g"), state.get("f_prev")
        if d is not None:  # carry the direction on: the new gradient may differ (a new batch order)
            d = -g + self._beta(g, g_prev) * d
        else:
            d, f_prev = -g, f + float(g.norm()) / 2  # scipy's guess of a previous loss for the first trial step
        for _ in range(group["max_iter"]):
            gtd = g.dot(d)
            if gtd >= 0:  # not a descent direction: restart along the gradient
                d, gtd = -g, -g.dot(g)
            t = min(group["lr"], 2.02 * (f - f_prev) / float(gtd)) if float(gtd) != 0 else group["lr"]
            t = t if t > 0 else group["lr"]
            x = self._flat_params()
            f_new, g_new, t = self._line_search(closure, x, t, d, f, g, gtd)
            self.counts["n_iter"] += 1
            d = -g_new + self._beta(g_new, g) * d
            f_prev, f, g = f, f_new, g_new
            if g.abs().max() <= group["tolerance_grad"] or abs(f - f_prev) < group["tolerance_change"] or abs(t) * float(d.abs().max()) < group["tolerance_change"]:
                break
        state.update(d=d, g=g, f_prev=f_prev)
        return torch.tensor(first)

    def _beta(self, g: torch.Tensor, g_prev: torch.Tensor) -> torch.Tensor:
        gg_prev = g_prev.dot(g_prev)
        if self.param_groups[0]["beta"] == "fr":
            return g.dot(g) / gg_prev
        return torch.clamp(g.dot(g - g_prev) / gg_prev, min=0)


class Newton(_FullBatch):
    """Damped Newton's method: the exact Hessian where the model is small, Newton-CG beyond.

    Up to ``max_exact_params`` parameters the Hessian is formed from batched Hessian-vector
    products (one vmapped double backward) and the step solves (H + lambda I) p = -g, lambda
    raised from zero by `damping` steps until H + lambda I has a Cholesky factor (positive
    definite). Beyond it, Newton-CG: the step is truncated conjugate gradient on H p = -g with
    Hessian-vector products, stopped at a relative residual of min(0.5, sqrt|g|) or at negative
    curvature (scipy's and Nocedal & Wright's algorithm 7.1). Both end in a strong-Wolfe line
    search that tries the full step first."""

    def __init__(self, params, lr: float = 1.0, max_iter: int = 10, max_exact_params: int = 500, damping: float = 1e-4, cg_max_iter: int = 50, tolerance_grad: float = 1e-5, tolerance_change: float = 1e-9, weight_decay: float = 0.0, c2: float = 0.9, max_ls: int = 25) -> None:
        super().__init__(params, dict(lr=lr, max_iter=max_iter, max_exact_params=max_exact_params, damping=damping, cg_max_iter=cg_max_iter, tolerance_grad=tolerance_grad, tolerance_change=tolerance_change, weight_decay=weight_decay, c2=c2, max_ls=max_ls))

    @property
    def exact(self) -> bool:
        return sum(p.numel() for p in self._params) <= self.param_groups[0]["max_exact_params"]

    def _graph(self, closure: Closure) -> tuple[float, torch.Tensor]:
        """Loss and flat gradient with the gradient's own graph, for Hessian-vector products."""
        with torch.enable_grad():
            loss = closure(backward=False)
            grads = torch.autograd.grad(loss, self._params, create_graph=True, allow_unused=True)
            grad = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, self._params, strict=True)])
        self.counts["func_evals"] += 1
        f = float(loss.detach())
        wd = self.param_groups[0]["weight_decay"]
        if wd:
            flat = self._flat_params()
            f, grad = f + self._decay(flat), grad + wd * flat
        return f, grad

    def _hvp(self, grad: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H v for one vector (n,) or each row of a matrix (k, n), with weight decay's wd * v."""
        with torch.enable_grad():
            batched = v.dim() == 2
            parts = torch.autograd.grad(grad, self._params, v, retain_graph=True, allow_unused=True, is_grads_batched=batched)
        lead = (v.shape[0],) if batched else ()
        hv = torch.cat([(h if h is not None else torch.zeros(*lead, *p.shape, device=p.device, dtype=p.dtype)).reshape(*lead, -1) for h, p in zip(parts, self._params, strict=True)], dim=-1)
        self.counts["hess_evals"] += v.shape[0] if batched else 1
        wd = self.param_groups[0]["weight_decay"]
        return hv.add(v, alpha=wd) if wd else hv

    def _exact_direction(self, grad: torch.Tensor) -> torch.Tensor:
        g = grad.detach()
        n = g.numel()
        eye = torch.eye(n, dtype=g.dtype, device=g.device)
        hessian = self._hvp(grad, eye)
        hessian = (hessian + hessian.T) / 2
        damping, lam = self.param_groups[0]["damping"], 0.0
        scale = float(hessian.diagonal().abs().mean()) or 1.0
        for _ in range(40):
            factor, info = torch.linalg.cholesky_ex(hessian + lam * eye)
            if int(info) == 0:
                return torch.cholesky_solve(-g.unsqueeze(1), factor).squeeze(1)
            lam = max(lam * 10, damping * scale)
        return -g  # no positive-definite shift found: a gradient step (the line search sizes it)

    def _cg_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Truncated CG on H p = -g (Nocedal & Wright algorithm 7.1, as scipy's Newton-CG)."""
        g = grad.detach()
        g_norm = float(g.abs().sum())
        tol = min(0.5, math.sqrt(g_norm)) * g_norm
        p, r = torch.zeros_like(g), g.clone()
        d, rr = -r, r.dot(r)
        for i in range(self.param_groups[0]["cg_max_iter"]):
            if float(r.abs().sum()) <= tol:
                break
            hd = self._hvp(grad, d)
            curvature = d.dot(hd)
            if curvature <= 0:  # negative curvature: stop (on the first iteration, the gradient step)
                return -g if i == 0 else p
            alpha = rr / curvature
            p, r = p + alpha * d, r + alpha * hd
            rr_new = r.dot(r)
            d, rr = -r + (rr_new / rr) * d, rr_new
        return p

    def _line_search_with_graph(self, closure: Closure, x: torch.Tensor, d: torch.Tensor, f: float, g: torch.Tensor):
        """The strong-Wolfe search, each trial evaluated with its gradient's graph: where the
        accepted point is the last one tried (nearly always, the full step), the next iteration
        starts from it without evaluating the loss again (as scipy reuses the search's gradient)."""
        last: dict = {}

        def obj_func(x, t, d):
            self._set(x + t * d)
            f_t, grad_t = self._graph(closure)
            last.update(t=float(t), f=f_t, grad=grad_t)
            return f_t, grad_t.detach()

        group = self.param_groups[0]
        f_new, _, t, _ = strong_wolfe()(obj_func, x, group["lr"], d, f, g, g.dot(d), c2=group["c2"], tolerance_change=group["tolerance_change"], max_ls=group["max_ls"])
        t = float(t)
        if last.get("t") == t:  # the parameters are there already (setting them again would void the graph)
            return float(f_new), last["grad"], t
        self._set(x + t * d)
        return float(f_new), None, t

    @torch.no_grad()
    def step(self, closure: Closure) -> torch.Tensor:
        group = self.param_groups[0]
        if group["lr"] <= 0:  # a schedule annealed the rate to 0: no step
            return torch.tensor(self._evaluate(closure)[0])
        f, grad = self._graph(closure)
        first = f
        for _ in range(group["max_iter"]):
            g = grad.detach()
            if g.abs().max() <= group["tolerance_grad"]:
                break
            d = self._exact_direction(grad) if self.exact else self._cg_direction(grad)
            del grad  # free the graph before the line search
            f_new, grad, t = self._line_search_with_graph(closure, self._flat_params(), d, f, g)
            self.counts["n_iter"] += 1
            done = abs(f_new - f) < group["tolerance_change"] or abs(t) * float(d.abs().max()) < group["tolerance_change"]
            f = f_new
            if done:
                break
            if grad is None:
                f, grad = self._graph(closure)
        return torch.tensor(first)

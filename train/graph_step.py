"""One training step over static buffers, replayed from a CUDA graph on a GPU.

On an H100 a gated step is host-bound: about 2,150 kernel launches take 50 ms to issue for 6 ms of
device work (README, Training). Captured once into a CUDA graph, the whole step (forward, Algorithm
1's loss, backward, SGD, the epoch sums) is one launch. A graph replays fixed memory, so everything
that changes between steps lives in buffers the step reads: the batch, the Gumbel temperature,
the FLOPs-penalty progress and the learning rate; SGD is written with foreach ops that take the
learning rate as a tensor (torch.optim.SGD reads it as a Python number, which a graph would freeze).

On the CPU, or where capture fails, the same step runs eagerly, so every device trains with the
same code; the tests check it against torch.optim.SGD on the CPU.
"""
import sys
from contextlib import nullcontext

import torch

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN/cuBLAS set-up, lazy state)


class StaticStep:
    def __init__(self, model, optimizer, loss_fn, autocast, x_like, y_like, use_graph: bool):
        """`loss_fn(logits, stats, x, y, progress, mode, exit_logits)` -> (loss, gbar or None); `x_like`, `y_like` a
        batch whose shape, dtype and memory format every batch shares."""
        self.model, self.optimizer, self.loss_fn, self.autocast = model, optimizer, loss_fn, autocast
        device = x_like.device
        self.x, self.y = torch.empty_like(x_like), torch.empty_like(y_like)
        self.tau, self.progress, self.lr = (torch.zeros((), device=device) for _ in range(3))
        # Epoch sums stay on the device (loss, correct, gbar, samples): no host sync inside an epoch.
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)
        self.nonfinite = torch.zeros((), device=device, dtype=torch.bool)
        group = optimizer.param_groups[0]
        self.momentum, self.weight_decay = group["momentum"], group["weight_decay"]
        self.use_graph = use_graph and device.type == "cuda"
        self.side = torch.cuda.Stream() if self.use_graph else None  # where warm-up steps run
        self.graph, self.graph_mode, self.warm = None, None, 0

    def new_epoch(self, lr: float) -> None:
        self.sums.zero_()
        self.nonfinite.zero_()
        self.lr.fill_(lr)

    def __call__(self, x, y, tau: float, progress: float, mode: str) -> None:
        self.x.copy_(x)
        self.y.copy_(y)
        self.tau.fill_(tau)  # fill_ takes the number as a kernel argument: no host-to-device copy
        self.progress.fill_(progress)
        if not self.use_graph:
            self._step(mode)
            return
        if mode != self.graph_mode:  # a new gate mode is a different computation: capture again
            self.graph, self.graph_mode, self.warm = None, mode, 0
        if self.graph is None and self.warm < WARMUP_STEPS:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self._step(mode)
            torch.cuda.current_stream().wait_stream(self.side)
            self.warm += 1
            return
        if self.graph is None:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._step(mode)
                self.graph = graph
            except Exception as e:  # capture failed: nothing ran, so train on eagerly
                print(f"cg-train: warning: CUDA graph capture failed ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
                      "training continues without graphs", file=sys.stderr, flush=True)
                self.use_graph, self.graph = False, None
                torch.cuda.synchronize()
                self._step(mode)
                return
        self.graph.replay()  # the captured step did not run during capture; this runs it

    def _step(self, mode: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast() if self.autocast else nullcontext():
            logits, stats, exit_logits = self.model(self.x, mode, self.tau, with_exits=True)
        loss, gbar = self.loss_fn(logits, stats, self.x, self.y, self.progress, mode, exit_logits)
        loss.backward()
        self._sgd()
        n = self.y.shape[0]
        loss = loss.detach()
        self.nonfinite.logical_or_(~torch.isfinite(loss))
        gbar = gbar.detach() if gbar is not None else torch.ones((), device=loss.device)
        self.sums.add_(torch.stack([loss.double() * n, (logits.argmax(1) == self.y).sum().double(),
                                    gbar.double() * n, torch.full((), n, device=loss.device,
                                                                  dtype=torch.float64)]))

    @torch.no_grad()
    def _sgd(self) -> None:
        """torch.optim.SGD's update (momentum, weight decay, no dampening or Nesterov), its momentum
        buffers kept in the optimizer's state so checkpoints stay torch's format."""
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.optimizer.state[p]
            if state.get("momentum_buffer") is None:  # first step: buf = 0.9 * 0 + g = g, as torch's
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        if self.weight_decay:
            torch._foreach_add_(grads, params, alpha=self.weight_decay)
        torch._foreach_mul_(bufs, self.momentum)
        torch._foreach_add_(bufs, grads)
        torch._foreach_sub_(params, torch._foreach_mul(bufs, self.lr))

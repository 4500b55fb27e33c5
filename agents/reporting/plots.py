"""PNG plots for the README, results/ and MLflow artifacts (matplotlib, no display needed)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trainers.atomic_files import write_bytes_atomic  # noqa: E402


def save_figure(fig, out: Path) -> Path:
    """Every PNG here is written the same way (whole or not at all), and its figure freed (long
    runs make many)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes_atomic(out, buf.getvalue())


def learning_curve(timesteps: Sequence[int], returns: Sequence[float], out: Path, title: str,
                   eval_points: Sequence[tuple[int, float]] = ()) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if returns:
        ax.plot(timesteps, returns, ".", alpha=0.35, label="training episode return")
        w = max(1, len(returns) // 10)
        if len(returns) >= w:
            smooth = [sum(returns[max(0, i - w + 1) : i + 1]) / len(returns[max(0, i - w + 1) : i + 1])
                      for i in range(len(returns))]
            ax.plot(timesteps, smooth, "-", label=f"moving mean ({w})")
    if eval_points:
        xs, ys = zip(*eval_points)
        ax.plot(xs, ys, "o-", label="held-out validation return")
    ax.set_xlabel("environment steps (decisions)")
    ax.set_ylabel("return = relative eval-loss improvement")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def trajectories(runs: dict[str, dict], out: Path, title: str) -> Path:
    """runs: label -> episode log. Top: learning rate per step; bottom: validation loss."""
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.4, 5.4), sharex=True)
    for label, log in runs.items():
        a1.plot(range(1, len(log["schedule"]) + 1), [h["lr"] for h in log["schedule"]], label=label)
        xs, ys = zip(*log["eval_curve"])
        a2.plot(xs, ys, "o-", label=label, ms=3)
    a1.set_yscale("log")
    a1.set_ylabel("learning rate")
    a2.set_ylabel("validation loss")
    a2.set_xlabel("training step")
    a1.set_title(title)
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.grid(alpha=0.3)
    return save_figure(fig, out)


def lr_paths_by_instance(panels: dict[str, list[tuple[str, list[int], list[float], str]]], out: Path,
                         title: str) -> Path:
    """One panel per instance: learning rate against training step for each labelled run
    (label, steps, lr at each, line style). Seen side by side, the policy's paths from different
    starts show whether it steers toward a common rate, and where a static recipe already sits."""
    n = len(panels)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False, sharey=True)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for label, steps, lrs, style in lines:
            ax.plot(steps, lrs, style, label=label, lw=1.4, drawstyle="steps-post")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("learning rate")
    for ax in axes[-1, :]:
        ax.set_xlabel("training step")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out)


def final_vs_start_lr(points: Sequence[tuple[str, float, float]], out: Path, title: str,
                      what: tuple[str, str] = ("starting learning rate (drawn)", "final learning rate (policy)"),
                      target: float | None = None) -> Path:
    """One point per held-out episode, (instance, starting lr, final lr), log-log: a controller
    that steers pulls the points off the diagonal toward a band; one that holds sits on it.
    ``what``: the axes' labels; ``target``: a level to draw across (the recipe's own, for scales)."""
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    names = sorted({p[0] for p in points})
    for name in names:
        xs = [p[1] for p in points if p[0] == name]
        ys = [p[2] for p in points if p[0] == name]
        ax.plot(xs, ys, "o", alpha=0.8, label=name)
    if points:
        lo = min(min(p[1], p[2]) for p in points) / 1.5
        hi = max(max(p[1], p[2]) for p in points) * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="no control (final = start)")
    if target is not None:
        ax.axhline(target, color="grey", lw=0.8, ls=":", label="the recipe's own")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(what[0])
    ax.set_ylabel(what[1])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def learner_diagnostics(csv_path: Path, out: Path, title: str) -> Path | None:
    """PPO's own curves from SB3's progress CSV, one panel each: the policy's std (exploration),
    explained variance and value loss (does the critic tell states apart?), approximate KL (how far
    each update moved the policy). None when the run made no update worth plotting."""
    import csv

    panels = [("train/std", "policy std"), ("train/explained_variance", "explained variance"),
              ("train/value_loss", "value loss"), ("train/approx_kl", "approx KL per update")]
    try:
        rows = list(csv.DictReader(Path(csv_path).open()))
    except OSError:
        return None

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r in rows:
            try:
                xs.append(float(r["time/total_timesteps"]))
                ys.append(float(r[key]))
            except (KeyError, TypeError, ValueError):
                if len(xs) > len(ys):
                    xs.pop()
        return xs, ys

    have = [(k, label) for k, label in panels if series(k)[1]]
    if not have:
        return None
    fig, axes = plt.subplots(1, len(have), figsize=(3.2 * len(have), 3.0))
    axes = [axes] if len(have) == 1 else list(axes)
    for ax, (key, label) in zip(axes, have):
        xs, ys = series(key)
        ax.plot(xs, ys, ".-")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("decisions learned from", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)

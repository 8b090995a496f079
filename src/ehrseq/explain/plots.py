"""Pictures a clinician can read, each saved as PNG beside the CSV of the data it shows.

- `stay_timeline`: one stay's events on a time axis (hours before the prediction
  cutoff), one row per event kind, coloured by attribution (red raises the predicted
  risk, blue lowers it), the strongest events labelled with their text.
- `head_heatmap`: the pooling weight each attention head gives each event of one stay.
- `importance_bars`: global importance (e.g. per event kind or per code).
- `deletion_plot`: predicted risk as the top events are removed, per method vs random.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from ehrseq.io import atomic_path  # noqa: E402
from ehrseq.schema import EVENT_TYPES  # noqa: E402


def write_csv(path: str | Path, data: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        data.to_csv(tmp, index=False)


def _save(fig: plt.Figure, data: pd.DataFrame, png_path: str | Path) -> None:
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_csv(png_path.with_suffix(".csv"), data)


def _short(text: str, width: int = 45) -> str:
    return textwrap.shorten(str(text), width=width, placeholder="...")


def stay_timeline(events: pd.DataFrame, png_path: str | Path, title: str, n_labels: int = 6) -> pd.DataFrame:
    """`events`: one stay's events with hours_before_cutoff, event_type, text, score, and
    optionally `planted` (bool: drawn as a black ring, so a reader sees whether the
    method found the planted truth). Writes PNG + CSV; returns the plotted data (with a
    `labelled` column)."""
    columns = ["hours_before_cutoff", "event_type", "text", "score"] + (["planted"] if "planted" in events else [])
    data = events[columns].reset_index(drop=True)
    top = data["score"].abs().sort_values(ascending=False).index[:n_labels]
    data = data.assign(labelled=data.index.isin(top))
    kinds = [k for k in EVENT_TYPES if k in set(data["event_type"])]
    y = data["event_type"].map({k: i for i, k in enumerate(kinds)}).to_numpy()
    x = -data["hours_before_cutoff"].to_numpy()
    limit = max(float(data["score"].abs().max()), 1e-12)

    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.9 * len(kinds)))
    points = ax.scatter(x, y, c=data["score"], cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -limit, limit),
                        s=70, edgecolors="0.3", linewidths=0.5, zorder=3)
    if "planted" in data and data["planted"].any():
        mark = data["planted"].to_numpy(bool)
        ax.scatter(x[mark], y[mark], s=220, facecolors="none", edgecolors="black", linewidths=1.5, zorder=2,
                   label="planted risk event (truth)")
        ax.legend(loc="upper left", fontsize=8)
    middle = x.min() / 2 if len(x) else 0.0
    for n, i in enumerate(top):
        right_half = x[i] > middle  # label towards the plot's centre, so it stays inside
        # alternate above/below and step further out, so labels of neighbouring events do not overlap
        dy = (10 + 12 * (n // 2)) * (1 if n % 2 == 0 else -1) - (4 if n % 2 else 0)
        ax.annotate(_short(data.loc[i, "text"]), (x[i], y[i]), xytext=(-6 if right_half else 6, dy),
                    textcoords="offset points", ha="right" if right_half else "left", fontsize=8, zorder=4,
                    arrowprops=dict(arrowstyle="-", color="0.5", lw=0.5))
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_ylim(-0.7, len(kinds) - 0.3)
    ax.set_xlabel("hours before the prediction time (0 = cutoff)")
    ax.axvline(0, color="0.4", lw=1, ls="--")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    fig.colorbar(points, ax=ax, pad=0.01, label="attribution to risk (red raises, blue lowers)")
    _save(fig, data, png_path)
    return data


def head_heatmap(weights: np.ndarray, labels: list[str], png_path: str | Path, title: str) -> pd.DataFrame:
    """`weights` [H, T]: one stay's pooling weights per head over its T events, `labels`
    one short text per event (oldest first). Writes PNG + CSV (head, position, event, weight)."""
    H, T = weights.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * T, 24), 1.5 + 0.5 * H))
    image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_yticks(range(H), [f"head {h + 1}" for h in range(H)])
    ax.set_xticks(range(T), [_short(label, 30) for label in labels], rotation=70, ha="right", fontsize=7)
    ax.set_xlabel("events, oldest to most recent")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, pad=0.01, label="pooling weight")
    data = pd.DataFrame({
        "head": np.repeat(np.arange(H), T), "position": np.tile(np.arange(T), H),
        "event": np.tile(np.asarray(labels, dtype=object), H), "weight": weights.reshape(-1),
    })
    _save(fig, data, png_path)
    return data


def importance_bars(table: pd.DataFrame, label: str, value: str, png_path: str | Path, title: str,
                    top_n: int = 20, min_events: int = 1) -> pd.DataFrame:
    """Horizontal bars of `value` per `label` (the `top_n` largest among rows with at
    least `min_events` events, when the table counts them: a mean over 2 events is
    noise), largest on top."""
    if "n_events" in table:
        table = table[table["n_events"] >= min_events]
    data = table.nlargest(top_n, value)[[label, value]].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 1 + 0.3 * len(data)))
    ax.barh([_short(v, 70) for v in data[label]][::-1], data[value].to_numpy()[::-1], color="tab:red")
    ax.set_xlabel(value.replace("_", " "))
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, data, png_path)
    return data


def deletion_plot(table: pd.DataFrame, png_path: str | Path, title: str,
                  ylabel: str = "mean predicted risk") -> pd.DataFrame:
    """Mean predicted risk after removing each method's top-k events (`deletion_table`);
    the steeper the fall below the random line, the more faithful the ranking."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, part in table.groupby("method", sort=False):
        style = dict(color="0.4", ls="--") if method == "random" else {}
        ax.plot(part["k"], part["risk"], marker="o", label=f"{method} (AOPC {part['aopc'].iloc[0]:.3f})", **style)
    ax.set_xlabel("events removed (most important first)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, table, png_path)
    return table

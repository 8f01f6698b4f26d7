"""The charts of the error analysis (`tfrcnn.evaluation.analysis`) as PNG files, with matplotlib.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot: nothing opens a window, and the process's
pyplot backend and figure list (a notebook's, a training run's) are left alone. `analysis.analyze` imports this
module only when it draws, so the analysis itself needs no matplotlib.
"""
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_IOU_STYLES = ("-", "--", ":", "-.")


def _save(figure, path, dpi=100):
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi)


def plot_pr_curves(path, class_names, recall, precision, ap):
    """A grid of per-class precision-recall curves, one subplot per class, one line per IoU threshold.

    Args:
      class_names: [C] titles.
      recall: float [R] the recall points (COCO's 101).
      precision: {iou threshold: float [C, R]}, NaN rows for classes without objects.
      ap: {iou threshold: float [C]}, shown in each legend.
    """
    num_classes = len(class_names)
    columns = max(1, math.ceil(math.sqrt(num_classes)))
    rows = max(1, math.ceil(num_classes / columns))
    # Fixed margins: constrained layout measures every text of every subplot, seconds for COCO's 80 classes.
    width, height = 3.0 * columns, 2.7 * rows + 0.6
    figure = Figure(figsize=(width, height))
    margins = {"left": 0.6 / width, "right": 0.99, "bottom": 0.45 / height, "top": 1 - 0.3 / height, "wspace": 0.25,
               "hspace": 0.45}
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=margins).ravel()
    for k, (axis, name) in enumerate(zip(axes, class_names)):
        axis.set_title(name, fontsize=9)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.tick_params(labelsize=7)
        axis.grid(True, alpha=0.3)
        if all(np.isnan(ap[t][k]) for t in ap):
            axis.text(0.5, 0.5, "no objects", ha="center", va="center", fontsize=8, color="gray")
            continue
        for style, t in zip(_IOU_STYLES, precision):
            axis.plot(recall, precision[t][k], style, linewidth=1.2, label=f"IoU {t:g}: AP {ap[t][k]:.3f}")
        axis.legend(loc="lower left", fontsize=7)
    for axis in axes[num_classes:]:
        axis.set_visible(False)
    figure.supxlabel("recall", fontsize=9)
    figure.supylabel("precision", fontsize=9)
    _save(figure, path)


def plot_confusion_matrix(path, matrix, labels, subtitle):
    """The confusion matrix with its counts in the cells, coloured by the share of its row (ground truth) so that
    rare and frequent classes read alike.

    matrix: int [C + 1, C + 1] (rows ground truth, columns predictions, the last of each "background"); labels:
    [C + 1] names; subtitle: the thresholds it was counted at.
    """
    matrix = np.asarray(matrix)
    row_sums = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
    size = len(labels)
    cells = max(3.0, 0.4 * size)  # inches for the matrix itself
    margin = 0.3 + 0.07 * max(len(label) for label in labels)  # room for the longest tick label, 8 pt
    width, height = margin + cells + 1.6, margin + cells + 0.5
    # Fixed margins: constrained layout would measure each cell's text, seconds for COCO's 81 x 81 cells.
    figure = Figure(figsize=(width, height))
    axis = figure.add_axes((margin / width, 0.2 / height, cells / width, cells / height))
    colorbar_axis = figure.add_axes(((margin + cells + 0.25) / width, 0.2 / height, 0.2 / width, cells / height))
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, cax=colorbar_axis, label="share of the row")
    axis.set_xticks(range(size), labels, rotation=45, ha="left", rotation_mode="anchor", fontsize=8)
    axis.set_yticks(range(size), labels, fontsize=8)
    axis.xaxis.tick_top()
    axis.xaxis.set_label_position("top")
    axis.set_xlabel("predicted")
    axis.set_ylabel("ground truth")
    axis.set_title(f"confusion matrix ({subtitle})", fontsize=10)
    font = max(5, min(9, round(90 / size)))
    rows, columns = np.nonzero(matrix)
    for i, j in zip(rows.tolist(), columns.tolist()):
        axis.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=font,
                  color="white" if shares[i, j] > 0.6 else "black")
    _save(figure, path)


def plot_errors(path, types, counts, daps, ap, foreground_iou):
    """A bar chart of the AP each TIDE error type costs (dAP), its count written on the bar.

    types: [T] names; counts: [T] ints; daps: [T] AP gained by fixing that type alone; ap: the AP as it is.
    """
    figure = Figure(figsize=(7.0, 4.0), layout="constrained")
    axis = figure.subplots()
    values = [0.0 if d is None or math.isnan(d) else d for d in daps]
    bars = axis.bar(types, values, color="tab:red")
    for bar, count in zip(bars, counts):
        axis.annotate(f"{count}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                      textcoords="offset points", ha="center", va="bottom", fontsize=8)
    axis.set_ylabel(f"dAP{round(foreground_iou * 100)} (fixing the type alone)")
    axis.set_ylim(0, max(values + [0.01]) * 1.15)
    ap_text = "-" if ap is None or math.isnan(ap) else f"{ap:.3f}"
    axis.set_title(f"TIDE error breakdown: AP{round(foreground_iou * 100)} {ap_text}; errors counted above the "
                   "bars", fontsize=10)
    axis.grid(True, axis="y", alpha=0.3)
    _save(figure, path)

"""The closing summary of a run: where it put its checkpoints and logs, and its last metrics."""

from __future__ import annotations

import math

import lightning as L


class RunSummary(L.Callback):
    """At the end of ``fit``, print the checkpoints, the log folder and the last metrics."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        lines = ["", "visiontransfer run finished."]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            best = getattr(ckpt, "best_model_path", "") or ""
            last = getattr(ckpt, "last_model_path", "") or ""
            lines.append(f"  checkpoints: {getattr(ckpt, 'dirpath', None)}")
            if best:
                lines.append(f"    best: {best}")
            if last and last != best:
                lines.append(f"    last: {last}")
        if log_dir:
            lines.append(f"  logs: {log_dir}")
        metrics = {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if v.numel() == 1}
        shown = [f"{k}={v:.4f}" for k, v in metrics.items() if math.isfinite(v)]
        if shown:
            lines.append("  metrics: " + ", ".join(shown))
        print("\n".join(lines), flush=True)

"""Parameter accounting: totals and a per-module breakdown (``patseg info``)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def count(params) -> tuple[int, int]:
    total = trainable = 0
    for p in params:
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def parameter_breakdown(model: nn.Module, depth: int = 2) -> dict:
    """{"total", "trainable", "modules": {dotted name: {"total", "trainable"}}} down to ``depth`` levels.

    Direct parameters of a module (e.g. ``bg_embed``) appear under their own dotted name; modules without
    parameters are left out.
    """
    total, trainable = count(model.parameters())
    modules: "OrderedDict[str, dict]" = OrderedDict()

    def visit(module: nn.Module, prefix: str, level: int) -> None:
        for name, p in module.named_parameters(recurse=False):
            modules[prefix + name] = {"total": p.numel(), "trainable": p.numel() if p.requires_grad else 0}
        for name, child in module.named_children():
            t, tr = count(child.parameters())
            if t == 0:
                continue
            modules[prefix + name] = {"total": t, "trainable": tr}
            if level + 1 < depth:
                visit(child, prefix + name + ".", level + 1)

    visit(model, "", 0)
    return {"total": total, "trainable": trainable, "modules": dict(modules)}


def format_breakdown(info: dict, title: str) -> str:
    """A fixed-width table of the breakdown."""
    lines = [title, f"{'module':<44}{'total':>14}{'trainable':>14}", "-" * 72]
    for name, row in info["modules"].items():
        indent = "  " * name.count(".")
        lines.append(f"{indent + name.split('.')[-1]:<44}{row['total']:>14,}{row['trainable']:>14,}")
    lines += ["-" * 72, f"{'total':<44}{info['total']:>14,}{info['trainable']:>14,}"]
    return "\n".join(lines)

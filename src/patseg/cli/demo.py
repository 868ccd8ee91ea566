"""``patseg demo``: an interactive open-vocabulary segmentation page in the browser (Gradio)."""

from __future__ import annotations

import argparse
import logging
import os

from patseg.cli._common import (
    DEVICE_HELP,
    add_clip_weights_option,
    add_precision_option,
    add_set_option,
    build_from_args,
    device_name,
    int_at_least,
    pick_device,
    positive_int,
)

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="an interactive segmentation page in the browser (needs the demo extra: pip install 'patseg[demo]')",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve a web page that segments images with any class names you type. Without --weights it "
        "runs the built-in SAN-tiny and PAT-tiny side by side, trained on OVSS-mini's generated world: pick a "
        "scene or make a new one, and name seen or unseen concepts (zero-shot). With --weights it runs that "
        "model on your own photos, with one-click vocabularies (COCO-Stuff-171, ADE20K-150/847, Pascal "
        "Context-59/459, VOC-20). The page shows the overlay with a legend, the label map, a score heat map of a "
        "class you pick, the time taken, and for PAT its token maps per pyramid stage and its reconstruction. "
        "The server listens on 127.0.0.1 (this machine only) unless --host says otherwise; stop it with Ctrl-C.",
        epilog="examples:\n"
        "  patseg demo\n"
        "  patseg demo --weights san_vitb16.safetensors --clip-weights ViT-B-16.bin --port 8080\n"
        "  patseg demo --host 0.0.0.0   # reachable from other machines: anyone who can reach it may use it",
    )
    p.add_argument("--weights", help="a patseg weights file (training checkpoint or `patseg convert-san` output)")
    p.add_argument("--preset", help="preset name; optional when --weights records its preset")
    add_clip_weights_option(p)
    add_set_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_at_least(1), default=7860, help="port to listen on (default 7860)")
    p.add_argument(
        "--short-side", type=positive_int, default=640, help="test resize of the short side with --weights (640)"
    )
    p.add_argument(
        "--max-classes", type=positive_int, default=1000, help="longest vocabulary the page accepts (default 1000)"
    )
    p.add_argument("--device", type=device_name, default=None, help=DEVICE_HELP)
    add_precision_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patseg.errors import UsageError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError(
            "`patseg demo` needs Gradio, which the demo extra installs: pip install 'patseg[demo]'"
        ) from None
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a local demo
    import torch

    from patseg.demo.app import serve
    from patseg.demo.backend import BUILTIN_TITLE, DemoBackend, builtin_backend
    from patseg.precision import check_precision

    device = pick_device(args.device)
    check_precision(args.precision, torch.device(device))  # before the models load
    if args.weights is None and args.preset is None:
        if args.clip_weights is not None or args.set:
            raise UsageError(
                "--clip-weights and --set go with --weights or --preset (the built-in models need neither)"
            )
        backend = builtin_backend(device, args.max_classes, args.precision)
        title = BUILTIN_TITLE
    else:
        model = build_from_args(args, args.weights, warn_untrained=True).to(device).eval()
        name = model.config.name
        backend = DemoBackend(
            {name: model},
            short_side=args.short_side,
            max_long_side=4 * args.short_side,
            max_classes=args.max_classes,
            precision=args.precision,
        )
        title = f"Model: {name}" + (f" from {os.path.basename(args.weights)}" if args.weights else " (random weights)")
    try:
        blocks = serve(backend, title, args.host, args.port)
    except OSError:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port} (in use, or not an address of this machine): "
            "choose another --port or --host"
        ) from None
    print(f"patseg demo: open http://{args.host}:{args.port} in a browser (Ctrl-C stops the server)", flush=True)
    try:
        blocks.block_thread()
    finally:
        blocks.close()
    return 0

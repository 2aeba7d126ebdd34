#!/usr/bin/env python
"""Inference with a pretrained pipeline: load a pipeline config and its weights, inspect it, run it.

    python examples/pretrained_inference.py --address 127.0.0.1:50050 \
        --pipeline rx_statistical --weights <server path of a .pt>

Without ``--weights`` the example first trains the pipeline once and saves it (the shipped configs come
without weights), then does what a user with a pretrained model does, in a fresh session:
ResolveConfig(pipeline) -> LoadPipeline -> LoadPipelineWeights(strict) -> GetPipelineInputs/Outputs ->
Inference -> GetPipelineVisualization(svg). It checks that the fresh session reproduces the training
session's scores exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _common import connected, data_overrides, parser, run_training, synthetic_frames

from cuvis_cluster.client import pb, pictures


def dtype_name(value: int) -> str:
    return pb.DType.Name(value).removeprefix("D_TYPE_").lower()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[1], out="outputs/pretrained_inference")
    p.add_argument("--pipeline", default="rx_statistical", help="server pipeline config")
    p.add_argument("--weights", help="server-side .pt of that pipeline (default: train and save one first)")
    args = p.parse_args(argv)
    frames = synthetic_frames([10, 11], args.size)
    reference = None

    with connected(args) as client:
        weights = args.weights
        if weights is None:
            print(f"no --weights given: training {args.pipeline} once and saving it")
            with client.create_session() as trainer:
                trainer.configure_trainrun(args.pipeline, data_overrides(args.size))
                if run_training(trainer, "statistical", verbose=args.verbose).status != "COMPLETE":
                    return 1
                saved = trainer.save_pipeline(f"pretrained/{args.pipeline}")
                weights = saved.weights_path
                reference = trainer.infer(frames["cube"], frames["wavelengths"], output_specs=["scores"])
            print(f"saved weights: {weights}")

        with client.create_session() as session:
            metadata = session.load_pipeline(args.pipeline)
            resolved = session.load_weights(weights, strict=True)
            print(f"loaded pipeline {metadata.name!r} with weights {resolved}")
            for name, spec in session.inputs().items():
                need = "required" if spec.required else "optional"
                print(f"  input  {name:12} {dtype_name(spec.dtype):8} {list(spec.shape)} {need}")
            for name, spec in sorted(session.outputs().items()):
                print(f"  output {name:28} {dtype_name(spec.dtype):8} {list(spec.shape)}")
            result = session.infer(frames["cube"], frames["wavelengths"])
            name, scores = result.scores()
            print(
                f"inference on 2 frames: {name} {scores.dtype}{list(scores.shape)}, mean {scores.mean():.4g}"
            )
            if reference is not None:
                same = np.array_equal(reference[name], scores)
                print(f"same scores as the training session: {same}")
                if not same:
                    return 1
            svg = session.visualize("svg")
            path = pictures.save_svg(svg, Path(args.out) / f"{args.pipeline}.svg")
            print(f"pipeline graph: {path} ({len(svg)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

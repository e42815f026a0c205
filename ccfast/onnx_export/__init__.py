"""Checkpoint → step graph: one refinement step (forward, explicit input gradient, head, step) as ONNX.

Modules, one job each: `graph` (builder plumbing and the TensorRT-checked operator list), `layers` (forward
and VJP of each layer kind), `backbones` (walks of ccfast's architectures), `head` (J, ℓ_fake, dJ/dlogits for
every objective), `step` (early stop, L2 step, projection, the `params` vector), `build` (assembly, metadata,
file export), `verify` (`--verify`: ORT against the PyTorch reference), `tensorrt_build` (TensorRT /
TensorRT-RTX plans). The command line is `python -m ccfast.export`; docs/export.md explains the graph. The
T-step loop that runs the graph lives beside its engines, in `ccfast/refine/step_graph_runner.py`.
"""

"""Fused Triton kernels of the refinement step (installed as `ccfast.kernels`).

    objective_head  logits -> J, realness ℓ_fake, dJ/dlogits, updated early-stop mask   (SPEC §2, §4)
    pgd_step        x, ∇J -> clamp(Π_{B2(x0, ε)}(x − α·g/‖g‖₂), 0, 1) on active rows     (SPEC §3.4, §4)

Each module holds one `@triton.jit` kernel, a thin launcher and its registration as a torch custom op
(`torch.ops.ccfast.*`), so that `torch.compile` and CUDA-graph capture see one opaque node each. Their
`_ref` twins are `ccfast.objectives.objective_grad_ref` + `early_stop_active_ref` and
`ccfast.pgd.pgd_step_ref`. Importing this package does not import triton: the modules do, when imported.
On a machine without a GPU, set `TRITON_INTERPRET=1` *before* importing them to run the kernels on CPU
tensors through Triton's interpreter (what CI does).
"""

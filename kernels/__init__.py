"""Fused Triton kernels of the refinement step (installed as `ccfast.kernels`).

    objective_head  logits -> J, realness ℓ_fake, dJ/dlogits, updated early-stop mask   (SPEC §2, §4)
    pgd_step        x, ∇J -> clamp(Π_{B2(x0, ε)}(x − α·g/‖g‖₂), 0, 1) on active rows     (SPEC §3.4, §4)
    conv1x1         1×1 convolutions as GEMMs: relu(x Wᵀ + b (+ r)) with a bit-packed ReLU mask, and the
                    input gradient with ReLU masks and a residual fused (issue 12; in the engine through bottleneck)
    bottleneck      one ResNet bottleneck block, forward (ReLU masks saved, no activations) and input
                    gradient: conv1x1's ops, cuDNN 3×3s, and two pointwise kernels (bias + ReLU + mask;
                    mask gate) (issue 12; the triton engine's fused_net=1 composes them into the whole
                    ResNet, ccfast/refine/fused_net.py; H200: 0.69× the compile+graph recipe at B=256)
    cudnn_conv      not Triton: one cuDNN graph (nvidia-cudnn-frontend) per convolution with its epilogue fused:
                    conv + bias (+ residual) + ReLU, and dgrad (+ residual) ⊙ ReLU gate (issue 12; the triton
                    engine's fused_net=1 fused_ops=cudnn, ccfast/refine/cudnn_net.py; H200: 0.99× the
                    compile+graph recipe at B=256)

Each module holds one `@triton.jit` kernel (conv1x1: one per direction; bottleneck: two pointwise ones), a
thin launcher and its registration as a torch custom op (`torch.ops.ccfast.*`), so that `torch.compile` and
CUDA-graph capture see one opaque node each. Their `_ref` twins are `ccfast.objectives.objective_grad_ref` +
`early_stop_active_ref`, `ccfast.pgd.pgd_step_ref`, `ccfast.conv1x1.conv1x1_relu_ref` / `conv1x1_dgrad_ref`,
and `ccfast.bottleneck.bottleneck_fwd_ref` / `bottleneck_dgrad_ref`; cudnn_conv's are
`ccfast.conv_epilogue.conv_bias_act_ref` / `conv_dgrad_gate_ref` (it imports cudnn on first use, not triton).
Importing this package does not import triton: the modules do, when imported.
On a machine without a GPU, set `TRITON_INTERPRET=1` *before* importing them to run the kernels on CPU
tensors through Triton's interpreter (what CI does).
"""

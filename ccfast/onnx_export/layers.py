"""Each layer kind, written twice into the graph: its forward, and its vector–Jacobian product.

`layer.forward(gb, x)` emits the forward nodes and keeps what the VJP needs (tensor names, shapes);
`layer.backward(gb, gy)` then emits ∂⟨gy, y⟩/∂x as ordinary operators, so that runtimes without autograd
(ONNX Runtime, TensorRT) compute ∇_x J (SPEC §4). The rules, for y = layer(x):

- Conv (BatchNorm folded in):  gx = ConvTranspose(gy, W), same stride/padding/dilation/groups, with
  `output_padding` = the rows and columns the strided forward dropped, so gx has x's exact shape. For a
  stride-1 convolution the same sums are a forward Conv (`dgrad="conv"`): gx = Conv(gy, W′) with
  W′ = W flipped in both spatial axes, its in/out channels swapped within each group, padding d·(k−1) − p.
- ReLU:  gx = gy where y > 0 else 0 (PyTorch's threshold_backward: zero gradient at exactly 0).
- MaxPool:  the gradient goes to the position of the window's maximum. PyTorch records the *first*
  maximum in the window's row-major scan (`val > maxval` is strict); without stored indices we rebuild
  that choice: for each of the k×k window offsets, in scan order, mark where the shifted input equals
  the pooled value and no earlier offset matched, then scatter with a fixed one-hot grouped
  ConvTranspose (one output channel per input channel, stride and padding of the pool).
- Option-A shortcut y = pad_c(x[:, :, ::2, ::2]):  gx = the un-padded channels placed back on the
  stride-2 grid (ConvTranspose with a fixed 1×1 kernel of ones, stride 2, one group per channel).
- Global average pool:  gx = gy / (H·W) broadcast over H×W.   Linear y = xWᵀ + b:  gx = gy·W.
- Residual y = relu(branch(x) + shortcut(x)):  g = relu'(gy);  gx = branch'(g) + shortcut'(g).
"""

from __future__ import annotations

import numpy as np

from .graph import GraphBuilder, Tensor


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _out_size(n: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _output_padding(n_in: int, n_out: int, k: int, s: int, p: int, d: int = 1) -> int:
    """Rows a strided forward dropped: what ConvTranspose must append to give back n_in exactly."""
    op = n_in - ((n_out - 1) * s - 2 * p + d * (k - 1) + 1)
    assert 0 <= op < max(s, d), (n_in, n_out, k, s, p, d, op)
    return op


class Layer:
    def forward(self, gb: GraphBuilder, x: Tensor) -> Tensor:
        raise NotImplementedError

    def backward(self, gb: GraphBuilder, gy: Tensor) -> Tensor:
        raise NotImplementedError


class Sequential(Layer):
    def __init__(self, layers: list[Layer]):
        self.layers = layers

    def forward(self, gb, x):
        for layer in self.layers:
            x = layer.forward(gb, x)
        return x

    def backward(self, gb, gy):
        for layer in reversed(self.layers):
            gy = layer.backward(gb, gy)
        return gy


class Identity(Layer):
    def forward(self, gb, x):
        return x

    def backward(self, gb, gy):
        return gy


class Normalize(Layer):
    """(x − mean)/std per channel, in fp32 before the cast to the compute type (models.JointModel).

    Not folded into the first convolution: its zero padding pads the *normalised* image, so folding
    would change the border pixels."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)

    def forward(self, gb, x):
        self.std_name = gb.const(self.std, np.float32, "norm_std")
        centred = gb.op("Sub", [x.name, gb.const(self.mean, np.float32, "norm_mean")], "x_centred")
        return Tensor(gb.op("Div", [centred, self.std_name], "x_normalised"), np.float32, x.shape)

    def backward(self, gb, gy):
        return Tensor(gb.op("Div", [gy.name, self.std_name], "grad_x"), np.float32, gy.shape)


class ConvBN(Layer):
    """Conv2d with an optional eval-mode BatchNorm2d folded in (W' = W·γ/√(var+eps), b' = (b − μ)·γ/√(var+eps) + β).

    Its VJP (the data gradient, "dgrad") is written in one of two ways that compute the same sums:

    - `dgrad="conv_transpose"`: ConvTranspose(gy, W) for every convolution.
    - `dgrad="conv"`: a forward Conv on precomputed weights W′ (`dgrad_weight`) for each stride-1
      convolution; strided ones keep the ConvTranspose. Under ONNX Runtime's CUDA provider ConvTranspose's cuDNN
      dgrad kernels took 49 % of the fp32 step on an H200, nearly twice the forward convolutions' 28 % for the
      same arithmetic (docs/export.md); a Conv runs cuDNN's forward kernels. W′ is a second initialiser (those
      weights are stored twice) so that no runtime transposes or flips weights inside the step."""

    DGRADS = ("conv", "conv_transpose")

    def __init__(self, conv, bn, where: str, dgrad: str = "conv"):
        import torch
        import torch.nn as nn

        from ..bn_fold import folded_conv_bn

        if dgrad not in self.DGRADS:
            raise ValueError(f"{where}: unknown convolution dgrad {dgrad!r} (choose {', '.join(self.DGRADS)})")
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"{where}: expected Conv2d, got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"{where}: only explicit zero padding is exported (got padding={conv.padding!r}, "
                f"mode={conv.padding_mode})"
            )
        if bn is not None and (not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None):
            raise TypeError(f"{where}: expected BatchNorm2d with running statistics, got {type(bn).__name__}")
        w, b = folded_conv_bn(conv, bn, torch.float64)  # in fp64, rounded once to the graph's fp32
        self.w, self.b = w.float().numpy(), b.float().numpy()
        self.where = where
        self.k = _pair(conv.kernel_size)
        self.s = _pair(conv.stride)
        self.p = _pair(conv.padding)
        self.d = _pair(conv.dilation)
        self.groups = int(conv.groups)
        self.in_pad = 0
        self.dgrad = dgrad

    def pad_input_channels(self, multiple: int) -> bool:
        """Give the convolution zero input channels up to a multiple of `multiple` (weights and input alike).

        The same function: the extra channels are zero on both sides. cuDNN's tensor-core kernels want C % 8
        == 0; over 3 input channels the stem's input-gradient (its ConvTranspose, or its dgrad Conv, whose output
        channels these are) otherwise falls to a slow kernel. Grouped convolutions are left alone. Returns
        whether padding was added."""
        c_in = self.w.shape[1]
        if self.groups != 1 or c_in % multiple == 0:
            return False
        self.in_pad = multiple - c_in % multiple
        zeros = np.zeros((self.w.shape[0], self.in_pad, *self.w.shape[2:]), np.float32)
        self.w = np.concatenate([self.w, zeros], axis=1)
        return True

    def _attrs(self):
        return dict(kernel_shape=list(self.k), strides=list(self.s), pads=[self.p[0], self.p[1], self.p[0], self.p[1]],
                    dilations=list(self.d), group=self.groups)

    def forward(self, gb, x):
        self.in_shape = x.shape
        if self.in_pad:
            pads = gb.const([0, 0, 0, 0, 0, self.in_pad, 0, 0], np.int64, "pads")  # at the end
            padded = gb.op("Pad", [x.name, pads, gb.const(0, x.dtype, "zero")], f"{self.where}_in_padded")
            x = Tensor(padded, x.dtype, (x.shape[0] + self.in_pad, *x.shape[1:]))
        self.w_name = gb.weight(self.w, f"{self.where}.w")
        b_name = gb.weight(self.b, f"{self.where}.b")
        y = gb.op("Conv", [x.name, self.w_name, b_name], self.where, **self._attrs())
        _, H, W = x.shape
        Ho = _out_size(H, self.k[0], self.s[0], self.p[0], self.d[0])
        Wo = _out_size(W, self.k[1], self.s[1], self.p[1], self.d[1])
        self.out_shape = (self.w.shape[0], Ho, Wo)
        return Tensor(y, x.dtype, self.out_shape)

    @property
    def dgrad_is_conv(self) -> bool:
        """Whether the VJP is emitted as a forward Conv: asked for, stride 1, and a padding d·(k−1) − p ≥ 0
        (a convolution padded by more than its reach would need a negative one; none of ccfast's has)."""
        return self.dgrad == "conv" and self.s == (1, 1) and all(
            p <= d * (k - 1) for k, p, d in zip(self.k, self.p, self.d, strict=True))

    def dgrad_weight(self) -> np.ndarray:
        """W′ (C_in, C_out/groups, kh, kw): for stride 1, Conv(gy, W′, padding d·(k−1) − p) = ConvTranspose(gy, W).

        ConvTranspose sums gy[o, h − i·d + p, …]·W[o, c, i, j] over o and the kernel; re-indexing the kernel
        from its far end (the flip) turns that into a forward convolution whose input channels are the forward's
        output channels (the transpose, group by group: group j of W′ maps group j's outputs back to its inputs).
        Computed once from the folded fp32 weights (a permutation, so rounding to fp16 afterwards gives W′ the
        same values as W)."""
        g = self.groups
        c_out, c_in_g, kh, kw = self.w.shape
        w = self.w.reshape(g, c_out // g, c_in_g, kh, kw).transpose(0, 2, 1, 3, 4)
        w = w.reshape(g * c_in_g, c_out // g, kh, kw)
        return np.ascontiguousarray(w[:, :, ::-1, ::-1])

    def backward(self, gb, gy):
        _, H, W = self.in_shape
        _, Ho, Wo = self.out_shape
        if self.dgrad_is_conv:
            pads = [d * (k - 1) - p for k, p, d in zip(self.k, self.p, self.d, strict=True)]
            gx = gb.op("Conv", [gy.name, gb.weight(self.dgrad_weight(), f"{self.where}.dgrad.w")], f"grad_{self.where}",
                       kernel_shape=list(self.k), strides=[1, 1], pads=[*pads, *pads], dilations=list(self.d),
                       group=self.groups)
        else:
            op = [_output_padding(H, Ho, self.k[0], self.s[0], self.p[0], self.d[0]),
                  _output_padding(W, Wo, self.k[1], self.s[1], self.p[1], self.d[1])]
            gx = gb.op("ConvTranspose", [gy.name, self.w_name], f"grad_{self.where}", output_padding=op,
                       **self._attrs())
        if self.in_pad:  # the padded channels' gradient is dropped
            gx = gb.op("Slice", [gx, gb.const([0], np.int64, "starts"), gb.const([self.in_shape[0]], np.int64, "ends"),
                                 gb.axes(1)], f"grad_{self.where}_unpadded")
        return Tensor(gx, gy.dtype, self.in_shape)


class ReLU(Layer):
    def __init__(self, where: str):
        self.where = where

    def forward(self, gb, x):
        self.y = Tensor(gb.op("Relu", [x.name], self.where), x.dtype, x.shape)
        return self.y

    def backward(self, gb, gy):
        zero = gb.const(0, gy.dtype, "zero")
        positive = gb.op("Greater", [self.y.name, zero], f"{self.where}_mask")
        return Tensor(gb.op("Where", [positive, gy.name, zero], f"grad_{self.where}"), gy.dtype, gy.shape)


class MaxPool(Layer):
    """MaxPool2d. Its VJP routes gy to each window's first maximum (see the module docstring), then scatters
    the k×k routed maps back onto the input grid, in one of two ways that compute the same sums:

    - `scatter="conv"`: a fixed one-hot grouped ConvTranspose (C groups of k·k channels, the pool's stride
      and padding): few nodes, but a grouped transposed convolution, which some cuDNN configurations
      (fp16, NHWC) run with a slow generic kernel.
    - `scatter="interleave"`: input row h = s·m + r receives from the windows m + j with offset
      d = r + p − s·j in [0, k); each of the s×s residue planes is a sum of shifted routed maps (Slice + Pad),
      and the planes are interleaved by Concat + Reshape. Data movement and additions only."""

    SCATTERS = ("conv", "interleave")

    def __init__(self, pool, where: str, scatter: str = "conv"):
        if pool.ceil_mode or pool.return_indices or _pair(pool.dilation) != (1, 1):
            raise ValueError(f"{where}: only MaxPool2d with dilation 1, ceil_mode=False is exported")
        if scatter not in self.SCATTERS:
            raise ValueError(f"{where}: unknown max-pool scatter {scatter!r} (choose {', '.join(self.SCATTERS)})")
        self.k = _pair(pool.kernel_size)
        self.s = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        self.p = _pair(pool.padding)
        self.where = where
        self.scatter = scatter
        if scatter == "interleave" and (self.s[0] > self.k[0] or self.s[1] > self.k[1]):
            raise ValueError(f"{where}: the interleave scatter needs stride ≤ kernel (every input row in some window)")

    def forward(self, gb, x):
        self.x = x
        C, H, W = x.shape
        self.out_shape = (
            C,
            _out_size(H, self.k[0], self.s[0], self.p[0]),
            _out_size(W, self.k[1], self.s[1], self.p[1]),
        )
        pads = [self.p[0], self.p[1], self.p[0], self.p[1]]
        self.y = Tensor(
            gb.op("MaxPool", [x.name], self.where, kernel_shape=list(self.k), strides=list(self.s), pads=pads),
            x.dtype,
            self.out_shape,
        )
        return self.y

    def _routed(self, gb, gy) -> dict[tuple[int, int], str]:
        """(di, dj) → gy where that window offset holds the window's first maximum (PyTorch's scan order), else 0."""
        (kh, kw), (sh, sw), (ph, pw) = self.k, self.s, self.p
        _, Ho, Wo = self.out_shape
        dt = gy.dtype
        # Padding holds the type's lowest finite value: it can never equal a window maximum, which is taken
        # over real inputs only (so, as in PyTorch, padding never receives gradient).
        lowest = gb.const(np.finfo(dt).min, dt, "lowest")
        xp = gb.op(
            "Pad",
            [self.x.name, gb.const([0, 0, ph, pw, 0, 0, ph, pw], np.int64, "pads"), lowest],
            f"{self.where}_padded",
        )
        zero = gb.const(0, dt, "zero")
        taken = None
        routed = {}
        for di in range(kh):
            for dj in range(kw):  # PyTorch's scan order within a window: rows, then columns
                starts = gb.const([di, dj], np.int64, "starts")
                ends = gb.const([di + sh * (Ho - 1) + 1, dj + sw * (Wo - 1) + 1], np.int64, "ends")
                shifted = gb.op("Slice", [xp, starts, ends, gb.axes(2, 3), gb.const([sh, sw], np.int64, "steps")],
                                f"{self.where}_at{di}{dj}")
                is_max = gb.op("Equal", [shifted, self.y.name], f"{self.where}_ismax{di}{dj}")
                if taken is None:
                    first, taken = is_max, is_max
                else:
                    first = gb.op(
                        "And",
                        [is_max, gb.op("Not", [taken], f"{self.where}_free{di}{dj}")],
                        f"{self.where}_first{di}{dj}",
                    )
                    taken = gb.op("Or", [taken, is_max], f"{self.where}_taken{di}{dj}")
                routed[(di, dj)] = gb.op("Where", [first, gy.name, zero], f"{self.where}_grad{di}{dj}")
        return routed

    def backward(self, gb, gy):
        routed = self._routed(gb, gy)
        scatter = self._scatter_conv if self.scatter == "conv" else self._scatter_interleave
        gx = scatter(gb, routed, gy.dtype)
        return Tensor(gx, gy.dtype, self.x.shape)

    def _scatter_conv(self, gb, routed, dt) -> str:
        (kh, kw), (sh, sw), (ph, pw) = self.k, self.s, self.p
        C, H, W = self.x.shape
        _, Ho, Wo = self.out_shape
        K = kh * kw
        unsqueezed = [gb.op("Unsqueeze", [g, gb.axes(2)], f"{g}_u") for g in routed.values()]
        stacked = gb.op("Concat", unsqueezed, f"{self.where}_routed", axis=2)  # (B, C, K, Ho, Wo), scan order
        flat = gb.op(
            "Reshape", [stacked, gb.const([-1, C * K, Ho, Wo], np.int64, "shape")], f"{self.where}_routed_flat"
        )
        onehot = np.zeros((C * K, 1, kh, kw), np.float32)
        for c in range(C):
            for k in range(K):
                onehot[c * K + k, 0, k // kw, k % kw] = 1.0
        op = [_output_padding(H, Ho, kh, sh, ph), _output_padding(W, Wo, kw, sw, pw)]
        return gb.op("ConvTranspose", [flat, gb.weight(onehot, f"{self.where}.scatter")], f"grad_{self.where}",
                     kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], group=C, output_padding=op)

    def _scatter_interleave(self, gb, routed, dt) -> str:
        (kh, kw), (sh, sw), (ph, pw) = self.k, self.s, self.p
        C, H, W = self.x.shape
        _, Ho, Wo = self.out_shape
        Mh, Mw = -(-H // sh), -(-W // sw)  # rows/columns of each residue plane

        def sources(r, k, s, p):  # (offset d, window shift j) feeding residue r: d = r + p − s·j in [0, k)
            return [(r + p - s * j, j) for j in range((r + p - k) // s + 1, (r + p) // s + 1)]

        def shifted(name, jh, jw):  # t[m + jh, n + jw] on an Mh × Mw grid, zero outside the Ho × Wo windows
            lo = [max(jh, 0), max(jw, 0)]
            hi = [min(Mh + jh, Ho), min(Mw + jw, Wo)]
            if hi[0] <= lo[0] or hi[1] <= lo[1]:
                return None
            if lo != [0, 0] or hi != [Ho, Wo]:
                name = gb.op("Slice", [name, gb.const(lo, np.int64, "starts"), gb.const(hi, np.int64, "ends"),
                                       gb.axes(2, 3)], f"{name}_sh{jh}{jw}")
            before = [max(-jh, 0), max(-jw, 0)]
            after = [Mh - before[0] - (hi[0] - lo[0]), Mw - before[1] - (hi[1] - lo[1])]
            if before != [0, 0] or after != [0, 0]:
                pads = gb.const([0, 0, before[0], before[1], 0, 0, after[0], after[1]], np.int64, "pads")
                name = gb.op("Pad", [name, pads, gb.const(0, dt, "zero")], f"{name}_pd{jh}{jw}")
            return name

        rows = []
        for r in range(sh):
            planes = []
            for c in range(sw):
                terms = [shifted(routed[(di, dj)], jh, jw)
                         for di, jh in sources(r, kh, sh, ph) for dj, jw in sources(c, kw, sw, pw)]
                terms = [t for t in terms if t is not None]
                if not terms:
                    raise ValueError(f"{self.where}: a {H}×{W} input is too small for the interleave scatter")
                plane = terms[0]
                for t in terms[1:]:
                    plane = gb.op("Add", [plane, t], f"{self.where}_plane{r}{c}")
                planes.append(plane)
            rows.append(self._interleave(gb, planes, axis=3, shape=[-1, C, Mh, Mw * sw], hint=f"{self.where}_row{r}"))
        full = self._interleave(gb, rows, axis=2, shape=[-1, C, Mh * sh, Mw * sw], hint=f"{self.where}_rows")
        if (Mh * sh, Mw * sw) != (H, W):
            full = gb.op("Slice", [full, gb.const([0, 0], np.int64, "starts"), gb.const([H, W], np.int64, "ends"),
                                   gb.axes(2, 3)], f"{self.where}_cropped")
        return full

    @staticmethod
    def _interleave(gb, parts, axis, shape, hint):
        """parts[i][..., m, ...] → out[..., len(parts)·m + i, ...] along `axis` (2: rows, 3: columns)."""
        if len(parts) == 1:
            return parts[0]
        new_axis = axis + 1
        unsqueezed = [gb.op("Unsqueeze", [t, gb.axes(new_axis)], f"{t}_u") for t in parts]
        stacked = gb.op("Concat", unsqueezed, f"{hint}_stacked", axis=new_axis)
        return gb.op("Reshape", [stacked, gb.const(shape, np.int64, "shape")], hint)


class SubsamplePadShortcut(Layer):
    """He et al. 2016 option A: x[:, :, ::2, ::2] with `pad` zero channels on each side."""

    def __init__(self, pad: int, where: str):
        self.pad = int(pad)
        self.where = where

    def forward(self, gb, x):
        self.in_shape = x.shape
        C, H, W = x.shape
        sub = gb.op("Slice", [x.name, gb.const([0, 0], np.int64, "starts"), gb.const([H, W], np.int64, "ends"),
                              gb.axes(2, 3), gb.const([2, 2], np.int64, "steps")], f"{self.where}_sub")
        pads = gb.const([0, self.pad, 0, 0, 0, self.pad, 0, 0], np.int64, "pads")
        self.out_shape = (C + 2 * self.pad, (H + 1) // 2, (W + 1) // 2)
        return Tensor(gb.op("Pad", [sub, pads, gb.const(0, x.dtype, "zero")], self.where), x.dtype, self.out_shape)

    def backward(self, gb, gy):
        C, H, W = self.in_shape
        _, h, w = self.out_shape
        inner = gb.op(
            "Slice",
            [gy.name, gb.const([self.pad], np.int64, "starts"), gb.const([self.pad + C], np.int64, "ends"), gb.axes(1)],
            f"grad_{self.where}_unpad",
        )
        ones = gb.weight(np.ones((C, 1, 1, 1), np.float32), f"{self.where}.scatter")
        gx = gb.op("ConvTranspose", [inner, ones], f"grad_{self.where}", kernel_shape=[1, 1], strides=[2, 2], group=C,
                   output_padding=[_output_padding(H, h, 1, 2, 0), _output_padding(W, w, 1, 2, 0)])
        return Tensor(gx, gy.dtype, self.in_shape)


class Residual(Layer):
    """y = relu(branch(x) + shortcut(x)): the block of every ResNet here."""

    def __init__(self, branch: Layer, shortcut: Layer, where: str):
        self.branch, self.shortcut = branch, shortcut
        self.relu = ReLU(f"{where}.out")
        self.where = where

    def forward(self, gb, x):
        b = self.branch.forward(gb, x)
        s = self.shortcut.forward(gb, x)
        total = Tensor(gb.op("Add", [b.name, s.name], f"{self.where}.sum"), b.dtype, b.shape)
        return self.relu.forward(gb, total)

    def backward(self, gb, gy):
        g = self.relu.backward(gb, gy)
        gb_ = self.branch.backward(gb, g)
        gs = self.shortcut.backward(gb, g)
        return Tensor(gb.op("Add", [gb_.name, gs.name], f"grad_{self.where}.in"), gb_.dtype, gb_.shape)


class GlobalAvgPoolFlatten(Layer):
    def __init__(self, where: str):
        self.where = where

    def forward(self, gb, x):
        self.in_shape = x.shape
        pooled = gb.op("GlobalAveragePool", [x.name], self.where)
        return Tensor(gb.op("Flatten", [pooled], f"{self.where}_flat", axis=1), x.dtype, (x.shape[0],))

    def backward(self, gb, gy):
        _, H, W = self.in_shape
        g4 = gb.op("Unsqueeze", [gy.name, gb.axes(2, 3)], f"grad_{self.where}_4d")
        spread = gb.const(np.full((1, 1, H, W), 1.0 / (H * W)), gy.dtype, f"{self.where}_spread")
        return Tensor(gb.op("Mul", [g4, spread], f"grad_{self.where}"), gy.dtype, self.in_shape)


class Linear(Layer):
    def __init__(self, fc, where: str):
        import torch.nn as nn

        if not isinstance(fc, nn.Linear):
            raise TypeError(f"{where}: expected Linear, got {type(fc).__name__}")
        self.w = fc.weight.detach().float().cpu().numpy()
        self.b = (
            fc.bias.detach().float().cpu().numpy() if fc.bias is not None else np.zeros(self.w.shape[0], np.float32)
        )
        self.where = where

    def forward(self, gb, x):
        if x.shape != (self.w.shape[1],):
            raise ValueError(f"{self.where}: expects {self.w.shape[1]} features, gets {x.shape}")
        self.w_name = gb.weight(self.w, f"{self.where}.w")
        y = gb.op("Gemm", [x.name, self.w_name, gb.weight(self.b, f"{self.where}.b")], "logits_net", transB=1)
        return Tensor(y, x.dtype, (self.w.shape[0],))

    def backward(self, gb, gy):
        return Tensor(gb.op("MatMul", [gy.name, self.w_name], f"grad_{self.where}"), gy.dtype, (self.w.shape[1],))

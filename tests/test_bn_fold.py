"""`folded_conv_bn` (one Conv → BatchNorm pair, in a chosen precision) against the unfolded pair, and against
`fold_batchnorm`'s fx fusion: the exported graph and the fast engines fold with one formula."""

import torch

from ccfast.bn_fold import fold_batchnorm, folded_conv_bn


def _pair(bias: bool, affine: bool):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=bias)
    bn = torch.nn.BatchNorm2d(5, affine=affine, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 2.0)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return conv.eval(), bn.eval()


def test_folded_pair_is_the_conv_then_batchnorm_in_float64():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    for bias in (True, False):
        for affine in (True, False):
            conv, bn = _pair(bias, affine)
            w, b = folded_conv_bn(conv, bn)
            assert w.dtype == b.dtype == torch.float64 and not w.requires_grad
            want = bn.double()(conv.double()(x))
            got = torch.nn.functional.conv2d(x, w, b, padding=1)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_without_batchnorm_it_is_the_convolution_and_a_missing_bias_is_zero():
    conv, _ = _pair(bias=False, affine=True)
    w, b = folded_conv_bn(conv, None, torch.float32)
    assert torch.equal(w, conv.weight.detach()) and torch.equal(b, torch.zeros(5))


def test_the_same_weights_as_the_fx_fusion_up_to_fp32_rounding():
    conv, bn = _pair(bias=True, affine=True)
    fused, status = fold_batchnorm(torch.nn.Sequential(conv, bn).eval())
    assert status == "on"
    w, b = folded_conv_bn(conv, bn)
    (fused_conv,) = [m for m in fused.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(fused_conv.weight.detach(), w.float(), rtol=2e-7, atol=1e-7)
    torch.testing.assert_close(fused_conv.bias.detach(), b.float(), rtol=2e-7, atol=1e-7)

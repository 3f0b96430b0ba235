"""PConv U-Net, the inpainting loss and the irregular masks, on real photos from scikit-image."""

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from scipy import ndimage

from partialconv.data.masks import (
    HOLE_RATIO_BUCKETS,
    IrregularMaskGenerator,
    MaskFolder,
    border_margin,
    bucket_of,
    generate_mask,
    hole_ratio,
    load_mask_png,
    save_mask_png,
)
from partialconv.engine.inpainting.inference import compose
from partialconv.engine.inpainting.metrics import l1_percent, psnr, ssim
from partialconv.losses import InpaintingLoss
from partialconv.models import PConvUNet, create_model


def photo(name: str, size: int) -> torch.Tensor:
    img = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1).float() / 255.0
    return F.interpolate(img[None], size=(size, size), mode="area").clamp(0, 1)


def gen_mask(size: int, bucket: int, seed: int, border: bool = False) -> torch.Tensor:
    return IrregularMaskGenerator(size, bucket=bucket, border=border)(seed)[None]


# ---------------------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("size,layers", [(256, 7), (512, 8)])
def test_shapes_through_the_whole_network(size, layers):
    torch.manual_seed(0)
    model = create_model("pconv_unet", layer_size=layers).eval()
    image = photo("astronaut", size)
    mask = gen_mask(size, 2, seed=1)
    with torch.no_grad():
        out, out_mask = model(image * mask, mask)
    assert out.shape == (1, 3, size, size) and out_mask.shape == (1, 3, size, size)
    assert torch.isfinite(out).all()
    # Eight/seven stride-2 stages see the whole image: no hole survives to the output mask.
    assert out_mask.min() == 1.0
    assert len(model.encoder) == layers and len(model.decoder) == layers
    enc_k = [s.conv.kernel_size[0] for s in model.encoder]
    enc_c = [s.conv.out_channels for s in model.encoder]
    assert enc_k == [7, 5, 5, 3, 3, 3, 3, 3][:layers] and enc_c == [64, 128, 256, 512, 512, 512, 512, 512][:layers]
    assert model.encoder[0].bn is None and all(s.bn is not None for s in model.encoder[1:])
    assert model.decoder[0].bn is None and model.decoder[0].act is None and model.decoder[0].conv.out_channels == 3
    assert model.decoder[0].conv.in_channels == 64 + 3 and all(s.conv.multi_channel for s in model.decoder)


def test_input_size_must_be_a_multiple_of_two_to_the_depth():
    model = PConvUNet(layer_size=3)
    with pytest.raises(ValueError, match=r"multiples of 8 \(2\*\*layer_size\), got 20x24"):
        model(torch.zeros(1, 3, 20, 24), torch.ones(1, 1, 20, 24))
    with pytest.raises(ValueError, match="mask must be"):
        model(torch.zeros(1, 3, 16, 16), torch.ones(1, 2, 16, 16))


def test_holes_never_leak():
    torch.manual_seed(0)
    model = PConvUNet(layer_size=3).eval()
    image = photo("chelsea", 64)
    mask = torch.ones(1, 1, 64, 64)
    mask[..., 8:40, 16:56] = 0
    first = model.encoder[0].conv
    out, upd = first(image * mask, mask.expand(1, 3, 64, 64))
    # Output position (i, j) of the 7x7 stride-2 pad-3 conv reads rows 2i-3..2i+3: fully inside the hole for
    # i in 6..18 and j in 10..26 -> exactly 0 (bias included) and marked invalid.
    assert (out[..., 6:19, 10:27] == 0).all() and (upd[..., 6:19, 10:27] == 0).all()
    assert (upd[..., :3, :] == 1).all()
    # The model upsamples one mask channel per decoder stage: valid because update masks agree across channels.
    assert torch.equal(upd, upd[:, :1].expand_as(upd))
    # Whatever the hole contains, the network output is the same.
    noisy = image.clone()
    noisy[..., 8:40, 16:56] = torch.rand(3, 32, 40)
    with torch.no_grad():
        a, _ = model(image * mask, mask)
        b, _ = model(noisy, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    comp = compose(noisy * mask, mask, a)
    valid = mask.expand_as(comp).bool()
    assert torch.equal(comp[valid], image[valid])
    assert torch.equal(comp[~valid], a[~valid])


def test_freeze_encoder_bn_keeps_running_stats_and_weights():
    torch.manual_seed(0)
    model = PConvUNet(layer_size=3).freeze_encoder_bn()
    model.train()
    bn = model.encoder[1].bn
    assert not bn.training and not bn.weight.requires_grad and model.decoder[1].bn.training
    before = bn.running_mean.clone()
    model(photo("coffee", 32), torch.ones(1, 1, 32, 32))
    assert torch.equal(bn.running_mean, before)
    assert not model.decoder[1].bn.running_mean.eq(0).all()


# ----------------------------------------------------------------------------------------------------- the loss


def reference_terms(vgg_path, inp, mask, out, gt):
    """The paper's Eq. 1-7 written out plainly in float64 with an independent torchvision VGG-16."""
    inp, mask, out, gt = (t.double() for t in (inp, mask, out, gt))
    layers = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    state = torch.load(vgg_path, weights_only=True)
    layers.load_state_dict({k[len("features.") :]: v for k, v in state.items()})
    layers = layers.double().eval()
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)

    def pools(x):
        x, feats = (x - mean) / std, []
        for i, layer in enumerate(layers[:17]):
            x = layer(x)
            if i in (4, 9, 16):
                feats.append(x)
        return feats

    comp = mask * inp + (1 - mask) * out
    n = gt.numel()
    valid = (mask * (out - gt)).abs().sum() / n
    hole = ((1 - mask) * (out - gt)).abs().sum() / n
    perc = style_out = style_comp = 0.0
    for fo, fc, fg in zip(pools(out), pools(comp), pools(gt)):
        perc += (fo - fg).abs().sum() / fo.numel() + (fc - fg).abs().sum() / fc.numel()
        b, c, h, w = fo.shape
        g_out, g_comp, g_gt = (torch.einsum("bchw,bdhw->bcd", f, f) / (c * h * w) for f in (fo, fc, fg))
        style_out += (g_out - g_gt).abs().sum() / (b * c * c)
        style_comp += (g_comp - g_gt).abs().sum() / (b * c * c)
    # P: the hole region dilated by one pixel (3x3); pairs of neighbours both in P.
    holes = (mask[:, 0] == 0).numpy()
    region = np.stack([ndimage.binary_dilation(h, structure=np.ones((3, 3))) for h in holes])
    region = torch.from_numpy(region)[:, None].double()
    tv = 0.0
    for i in range(comp.shape[-2]):
        for j in range(comp.shape[-1]):
            if j + 1 < comp.shape[-1]:
                both = region[..., i, j] * region[..., i, j + 1]
                tv += (both * (comp[..., i, j + 1] - comp[..., i, j]).abs()).sum()
            if i + 1 < comp.shape[-2]:
                both = region[..., i, j] * region[..., i + 1, j]
                tv += (both * (comp[..., i + 1, j] - comp[..., i, j]).abs()).sum()
    tv /= comp.numel()
    return dict(valid=valid, hole=hole, perceptual=perc, style_out=style_out, style_comp=style_comp, tv=tv)


def test_every_loss_term_matches_a_plain_reference(vgg_file):
    size = 48
    gt = torch.cat([photo("astronaut", size), photo("coffee", size)])
    mask = torch.cat([gen_mask(size, 1, seed=3), gen_mask(size, 4, seed=4, border=True)])
    torch.manual_seed(2)
    out = (gt + 0.2 * torch.randn_like(gt)).clamp(0, 1)
    inp = gt * mask
    loss = InpaintingLoss(vgg_file)
    got = loss(inp, mask, out, gt)
    ref = reference_terms(vgg_file, inp, mask, out, gt)
    weights = {"valid": 1, "hole": 6, "perceptual": 0.05, "style_out": 120, "style_comp": 120, "tv": 0.1}
    for key, w in weights.items():
        assert got[key].dtype == torch.float32
        torch.testing.assert_close(got[key].double(), w * ref[key], rtol=2e-4, atol=1e-9, msg=key)
        assert got[key] > 0, key
    torch.testing.assert_close(got["total"], sum(got[k] for k in weights))
    # Configurable weights; the fp32 loss gives the same numbers under bf16 autocast.
    zero_hole = InpaintingLoss(vgg_file, weights={"hole": 0.0, "tv": 1.0})(inp, mask, out, gt)
    assert zero_hole["hole"] == 0 and torch.allclose(zero_hole["tv"], got["tv"] * 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = loss(inp, mask, out.bfloat16(), gt)
    assert amp["total"].dtype == torch.float32
    torch.testing.assert_close(amp["valid"], loss(inp, mask, out.bfloat16().float(), gt)["valid"])


def test_loss_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no_such\.pth: no such file.*--vgg-weights PATH"):
        InpaintingLoss(tmp_path / "no_such.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(Exception, match=r"bad\.pth: not torchvision's vgg16"):
        InpaintingLoss(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="unknown loss weight"):
        InpaintingLoss(None, weights={"holes": 1.0})


def test_gram_and_tv_stay_finite_in_fp16():
    # Large activations: a one-step division would overflow fp16's 65504 before dividing by C*H*W.
    from partialconv.losses.inpainting import gram_matrix

    f = torch.full((1, 64, 32, 32), 20.0, dtype=torch.float16)
    g = gram_matrix(f)
    assert torch.isfinite(g).all() and torch.allclose(g.float(), torch.full((1, 64, 64), 400.0 / 64))


# ---------------------------------------------------------------------------------------------------- the masks


@pytest.mark.parametrize("border", [False, True])
def test_mask_ratios_land_in_their_bucket(border):
    for b, (lo, hi) in enumerate(HOLE_RATIO_BUCKETS):
        for seed in range(4):
            m = IrregularMaskGenerator(96, bucket=b, border=border).numpy(seed)
            r = hole_ratio(m)
            assert lo < r <= hi and bucket_of(r) == b, (b, seed, r)
            assert set(np.unique(m)) <= {0, 1}
            if border:
                k = border_margin(96, 96)
                inner = m[k:-k, k:-k]
                assert (m == 0).sum() == (inner == 0).sum()
    big = generate_mask(512, 512, HOLE_RATIO_BUCKETS[5], border=True, seed=7)
    assert 0.5 < hole_ratio(big) <= 0.6


def test_masks_are_deterministic_per_seed():
    gen = IrregularMaskGenerator(64, bucket=None, border=None)
    assert torch.equal(gen(5), gen(5))
    assert not torch.equal(gen(5), gen(6))
    buckets = {bucket_of(hole_ratio(gen(s))) for s in range(40)}
    assert buckets == set(range(6))


def test_mask_folder_png_convention_and_binary_augmentation(tmp_path):
    masks = [IrregularMaskGenerator(80, bucket=b)(b) for b in (1, 3)]
    (tmp_path / "sub").mkdir()
    for i, m in enumerate(masks):
        save_mask_png(m, tmp_path / "sub" / f"{i:05d}.png")
    # NVIDIA convention on disk: white = hole.
    raw = np.asarray(Image.open(tmp_path / "sub" / "00000.png"))
    assert set(np.unique(raw)) == {0, 255} and ((raw == 255) == (masks[0][0].numpy() == 0)).all()
    assert np.array_equal(load_mask_png(tmp_path / "sub" / "00001.png"), masks[1][0].numpy().astype(np.uint8))
    plain = MaskFolder(tmp_path, 80)
    assert len(plain) == 2 and torch.equal(plain.mask(1), masks[1])
    aug = MaskFolder(tmp_path, 64, augment=True)
    outs = [aug.mask(i % 2, seed=i) for i in range(8)]
    for o in outs:
        assert o.shape == (1, 64, 64) and set(o.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(aug.mask(0, seed=3), aug.mask(0, seed=3))
    assert len({hole_ratio(o) for o in outs}) > 4


# -------------------------------------------------------------------------------------------------- the metrics


def test_metrics_match_their_definitions():
    a = photo("chelsea", 64)
    noise = torch.randn_like(a, generator=torch.Generator().manual_seed(0)) * 0.05
    b = (a + noise).clamp(0, 1)
    mse = ((a.double() - b.double()) ** 2).mean()
    assert torch.allclose(psnr(b, a).double(), 10 * torch.log10(1 / mse), atol=1e-4)
    assert torch.allclose(l1_percent(b, a).double(), (a - b).abs().mean().double() * 100, atol=1e-5)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
    from skimage.metrics import structural_similarity

    ref = structural_similarity(
        *(t[0].permute(1, 2, 0).numpy() for t in (a, b)),
        channel_axis=2,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(b, a).item() == pytest.approx(ref, abs=2e-3)

"""Segmentors: torchvision / milesial parameter counts and key names, forward shapes, named
gradient-matching blocks, and loading torchvision-format weight files."""

import warnings

import pytest
import torch
from torch import nn

from lagm_ray.models.segmentors import (
    DeepLabV3,
    UNet,
    UnknownBlockError,
    block_names,
    build_segmentor,
    load_torchvision_weights,
    resnet,
    select_matched_parameters,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bn_param_names(model: nn.Module) -> set[str]:
    names = set()
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            names.update(f"{mname}.{pname}" for pname, _ in m.named_parameters(recurse=False))
    return names


@pytest.fixture(scope="module")
def deeplab101_sd():
    torch.manual_seed(0)
    model = build_segmentor("deeplabv3_resnet101", 21, aux_loss=True)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, n_params(model)


def tiny_deeplab(**kw) -> DeepLabV3:
    return build_segmentor("deeplabv3_resnet18", 5, width=8, **kw)


def tiny_unet(**kw) -> UNet:
    return build_segmentor("unet", 5, width=8, **kw)


# ------------------------------------------------------------------ parameter counts / key names


@pytest.mark.parametrize("depth,expected", [(18, 11_689_512), (50, 25_557_032), (101, 44_549_160)])
def test_resnet_parameter_counts_match_torchvision(depth, expected):
    assert n_params(resnet(depth, num_classes=1000)) == expected


def test_deeplabv3_resnet101_parameter_count_matches_torchvision(deeplab101_sd):
    # torchvision's deeplabv3_resnet101 (COCO_WITH_VOC_LABELS weights, aux head included): 60,996,202
    assert deeplab101_sd[1] == 60_996_202


def test_deeplabv3_state_dict_keys_are_torchvision_names(deeplab101_sd):
    shapes = deeplab101_sd[0]
    expected = {
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.bn1.running_mean": (64,),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
        "classifier.0.convs.0.0.weight": (256, 2048, 1, 1),
        "classifier.0.convs.1.0.weight": (256, 2048, 3, 3),  # first ASPP rate
        "classifier.0.convs.3.0.weight": (256, 2048, 3, 3),  # last ASPP rate
        "classifier.0.convs.4.1.weight": (256, 2048, 1, 1),  # image pooling branch conv
        "classifier.0.project.0.weight": (256, 5 * 256, 1, 1),
        "classifier.1.weight": (256, 256, 3, 3),
        "classifier.4.weight": (21, 256, 1, 1),
        "classifier.4.bias": (21,),
        "aux_classifier.0.weight": (256, 1024, 3, 3),
        "aux_classifier.4.weight": (21, 256, 1, 1),
    }
    for key, shape in expected.items():
        assert key in shapes, key
        assert shapes[key] == shape, key
    assert "backbone.layer3.22.conv3.weight" in shapes  # 23 blocks in layer3
    assert not [k for k in shapes if k.startswith("backbone.fc.") or k.startswith("backbone.avgpool")]
    # input normalisation constants stay out of the state dict
    assert not [k for k in shapes if "_in_" in k]


def test_deeplabv3_without_aux_has_no_aux_keys():
    sd = tiny_deeplab().state_dict()
    assert not [k for k in sd if k.startswith("aux_classifier.")]
    assert "classifier.4.weight" in sd


def test_unet_state_dict_keys_are_milesial_names():
    model = build_segmentor("unet", 2)
    sd = model.state_dict()
    for key in ("inc.double_conv.0.weight", "inc.double_conv.1.running_var",
                "down1.maxpool_conv.1.double_conv.0.weight", "down4.maxpool_conv.1.double_conv.3.weight",
                "up1.conv.double_conv.0.weight", "up4.conv.double_conv.3.weight",
                "outc.conv.weight", "outc.conv.bias"):
        assert key in sd, key
    assert sd["inc.double_conv.0.weight"].shape == (64, 3, 3, 3)
    assert sd["outc.conv.weight"].shape == (2, 64, 1, 1)
    # milesial's current UNet(n_channels=3, n_classes=2, bilinear=True): no conv bias before BN
    # (since milesial commit 514f18e, Dec 2021)
    assert n_params(model) == 17_263_042
    assert "inc.double_conv.0.bias" not in sd


# ----------------------------------------------------------------------------- forward shapes


def test_deeplabv3_forward_shape():
    torch.manual_seed(0)
    model = tiny_deeplab(aux_loss=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 5, 32, 32)
    main, aux = model.forward_with_aux(x)
    assert main.shape == aux.shape == (2, 5, 32, 32)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5, 32, 32)
    assert tiny_deeplab().forward_with_aux(x)[1] is None


@pytest.mark.parametrize("size", [32, 33])
@pytest.mark.parametrize("bilinear", [True, False])
def test_unet_forward_shape(size, bilinear):
    torch.manual_seed(0)
    model = tiny_unet(bilinear=bilinear)
    out = model(torch.rand(2, 3, size, size) * 2 - 1)
    assert out.shape == (2, 5, size, size)


def test_build_segmentor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="deeplabv3_resnet18"):
        build_segmentor("deeplabv3_resnet152", 5)
    with pytest.raises(ValueError, match="width"):
        build_segmentor("unet", 5, width=0)
    with pytest.raises(ValueError, match="depth"):
        resnet(152)


# ------------------------------------------------------------------------------------- blocks


def test_block_names():
    assert block_names(tiny_deeplab()) == ("Res1", "Res2", "Res3", "Res4", "Res5", "Head", "All")
    assert block_names(tiny_unet()) == ("Input", "Down", "Up", "Output", "U1", "U2", "All")


def test_head_block_selects_only_classifier():
    model = tiny_deeplab(aux_loss=True)
    bn = bn_param_names(model)
    names = [n for n, _ in select_matched_parameters(model, "Head")]
    assert names and all(n.startswith(("classifier.", "aux_classifier.")) for n in names)
    assert "classifier.4.weight" in names and "aux_classifier.4.weight" in names
    expected = [n for n, _ in model.named_parameters()
                if n.startswith(("classifier.", "aux_classifier.")) and n not in bn]
    assert names == expected


def test_block_union_keeps_parameter_order():
    model = tiny_deeplab()
    head = [n for n, _ in select_matched_parameters(model, ["Head"])]
    res5 = [n for n, _ in select_matched_parameters(model, ["Res5"])]
    both = [n for n, _ in select_matched_parameters(model, ["Res5", "Head"])]
    assert res5 and all(n.startswith("backbone.layer4.") for n in res5)
    assert set(both) == set(head) | set(res5)
    assert len(both) == len(head) + len(res5)
    order = [n for n, _ in model.named_parameters()]
    assert both == sorted(both, key=order.index)
    assert [n for n, _ in select_matched_parameters(model, ["Head", "Res5"])] == both


@pytest.mark.parametrize("make", [tiny_deeplab, tiny_unet])
def test_all_block_excludes_batchnorm(make):
    model = make()
    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
              for p in m.parameters(recurse=False)}
    assert bn_ids
    chosen = select_matched_parameters(model, "All")
    assert not [n for n, p in chosen if id(p) in bn_ids]
    assert len(chosen) == len(list(model.parameters())) - len(bn_ids)
    with_norm = select_matched_parameters(model, "All", include_norm=True)
    assert len(with_norm) == len(list(model.parameters()))


def test_unet_u1_block():
    model = tiny_unet()
    bn = bn_param_names(model)
    names = [n for n, _ in select_matched_parameters(model, "U1")]
    expected = [n for n, _ in model.named_parameters()
                if n.startswith(("outc.", "down1.", "up4.")) and n not in bn]
    assert names == expected
    assert "outc.conv.weight" in names and "down1.maxpool_conv.1.double_conv.0.weight" in names
    assert "up4.conv.double_conv.3.weight" in names
    assert not [n for n in names if n.startswith(("down2.", "up3.", "inc."))]


def test_selection_through_ddp_style_wrapper_uses_unwrapped_names():
    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    model = tiny_unet()
    got = [n for n, _ in select_matched_parameters(Wrapper(model), "Output")]
    assert got == ["outc.conv.weight", "outc.conv.bias"]
    assert block_names(Wrapper(model)) == block_names(model)


def test_unknown_block_raises():
    model = tiny_deeplab()
    with pytest.raises(UnknownBlockError) as ei:
        select_matched_parameters(model, ["Head", "Res9"])
    msg = str(ei.value)
    assert "Res9" in msg
    for valid in block_names(model):
        assert valid in msg
    assert isinstance(ei.value, ValueError)
    with pytest.raises(UnknownBlockError, match="U1"):
        select_matched_parameters(model, "U1")  # a U-Net block on DeepLab


def test_empty_block_list_raises():
    with pytest.raises(ValueError):
        select_matched_parameters(tiny_unet(), [])


def test_model_without_blocks_raises_type_error():
    with pytest.raises(TypeError):
        block_names(nn.Linear(2, 2))


# --------------------------------------------------------------------------------- weight loading


def assert_same_state(a: nn.Module, b: nn.Module, prefix_b: str = ""):
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in sa.items():
        assert torch.equal(v, sb[prefix_b + k]), k


def test_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = tiny_deeplab(aux_loss=True)
    src.backbone.bn1.running_mean.uniform_()  # buffers must travel too
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    dst = tiny_deeplab(aux_loss=True)
    assert not torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)
    load_torchvision_weights(dst, path)
    assert_same_state(src, dst)


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module_prefix", "model_module_prefix"])
def test_load_wrapped_formats(tmp_path, wrap):
    torch.manual_seed(0)
    src = tiny_unet()
    sd = src.state_dict()
    if "module_prefix" in wrap:
        sd = {"module." + k: v for k, v in sd.items()}
    obj = {"model": sd, "epoch": 3} if wrap.startswith("model") else {"state_dict": sd} if wrap == "state_dict" else sd
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    torch.manual_seed(1)
    dst = tiny_unet()
    load_torchvision_weights(dst, str(path))
    assert_same_state(src, dst)


def test_load_bare_resnet_into_deeplab_backbone(tmp_path):
    torch.manual_seed(0)
    net = resnet(18, num_classes=1000, width=8)
    assert "fc.weight" in net.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    torch.manual_seed(1)
    dst = tiny_deeplab()
    head_before = dst.classifier.state_dict()
    load_torchvision_weights(dst, path)
    trunk = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    dsd = dst.state_dict()
    for k, v in trunk.items():
        assert torch.equal(v, dsd["backbone." + k]), k
    for k, v in head_before.items():  # head keeps its initialisation
        assert torch.equal(v, dst.classifier.state_dict()[k]), k


def test_load_tolerates_missing_num_batches_tracked(tmp_path):
    src = tiny_unet()
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save(sd, path)
    load_torchvision_weights(tiny_unet(), path)


def test_load_missing_key_raises(tmp_path):
    sd = tiny_unet().state_dict()
    del sd["up2.conv.double_conv.0.weight"]
    path = tmp_path / "missing.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError) as ei:
        load_torchvision_weights(tiny_unet(), path)
    msg = str(ei.value)
    assert str(path) in msg and "up2.conv.double_conv.0.weight" in msg and "missing" in msg


def test_load_wrong_shape_raises(tmp_path):
    sd = tiny_unet().state_dict()
    sd["outc.conv.weight"] = torch.zeros(7, 8, 1, 1)  # 7 classes instead of 5
    path = tmp_path / "shape.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError) as ei:
        load_torchvision_weights(tiny_unet(), path)
    msg = str(ei.value)
    assert str(path) in msg and "outc.conv.weight" in msg and "(7, 8, 1, 1)" in msg and "(5, 8, 1, 1)" in msg


def test_load_unexpected_key_raises(tmp_path):
    sd = tiny_unet().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="extra.weight"):
        load_torchvision_weights(tiny_unet(), path)


def test_load_non_strict_warns_and_skips(tmp_path):
    torch.manual_seed(0)
    src = tiny_unet()
    sd = src.state_dict()
    del sd["up2.conv.double_conv.0.weight"]
    sd["outc.conv.weight"] = torch.zeros(7, 8, 1, 1)
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(sd, path)
    torch.manual_seed(1)
    dst = tiny_unet()
    keep_up2 = dst.up2.conv.double_conv[0].weight.detach().clone()
    keep_outc = dst.outc.conv.weight.detach().clone()
    with pytest.warns(UserWarning) as rec:
        load_torchvision_weights(dst, path, strict=False)
    msg = " ".join(str(w.message) for w in rec)
    assert "up2.conv.double_conv.0.weight" in msg and "outc.conv.weight" in msg and "extra.weight" in msg
    assert torch.equal(dst.up2.conv.double_conv[0].weight, keep_up2)
    assert torch.equal(dst.outc.conv.weight, keep_outc)
    assert torch.equal(dst.inc.double_conv[0].weight, src.inc.double_conv[0].weight)
    assert torch.equal(dst.outc.conv.bias, src.outc.conv.bias)


def test_load_clean_file_does_not_warn(tmp_path):
    src = tiny_unet()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_torchvision_weights(tiny_unet(), path, strict=False)


@pytest.mark.parametrize("content", ["truncated", "garbage", "empty"])
def test_load_corrupt_file_raises_value_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        good = tmp_path / "good.pt"
        torch.save(tiny_unet().state_dict(), good)
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="bad.pt") as ei:
        load_torchvision_weights(tiny_unet(), path)
    assert str(path) in str(ei.value)


def test_load_non_state_dict_raises_value_error(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="list.pt"):
        load_torchvision_weights(tiny_unet(), path)
    path = tmp_path / "empty_dict.pt"
    torch.save({}, path)
    with pytest.raises(ValueError, match="empty_dict.pt"):
        load_torchvision_weights(tiny_unet(), path)


def test_load_nonexistent_path_raises(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_torchvision_weights(tiny_unet(), path)
    with pytest.raises(FileNotFoundError):
        load_torchvision_weights(tiny_unet(), tmp_path)  # a directory is not a weights file

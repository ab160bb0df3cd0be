"""load(packed=True): weights stay packed, outputs equal mixbits.load's, state_dict holds the packed buffers."""

from __future__ import annotations

import pytest
import torch

from mixbits import PrepareConfig, export_model, load, prepare_
from mixbits.export import read_mbits
from mixbits.export.packed_model import PackedWeight

from ._export_nets import Oddities, TinyResNet, prepared, randomize_bn_


def _same(a, b, x):
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_every_bitwidth_equals_load(tmp_path):
    model, space, bits = prepared(randomize_bn_(TinyResNet()), lambda i, l: [1, 2, 3, 4, 5, 6, 7, 8, 16, 32][i % 10])
    mb = tmp_path / "r.mbits"
    export_model(model, space, mb)
    plain, packed = load(mb, model=TinyResNet()), load(mb, model=TinyResNet(), packed=True)
    x = torch.randn(4, 3, 16, 16)
    assert _same(plain, packed, x)
    assert packed.mixbits_packed and type(packed.stem).__name__ == "PackedConv2d"
    assert torch.equal(packed.stem.weight, plain.stem.weight)  # read anywhere, unpacked on the fly
    keys = packed.state_dict()
    assert "stem.weight" not in keys and keys["stem.weight_packed.codes0"].dtype == torch.uint8
    assert keys["stem.weight_packed.scales0"].dtype == torch.float16
    packed_bytes = sum(b.numel() * b.element_size() for m in packed.modules() if isinstance(m, PackedWeight)
                       for b in m.buffers())
    assert packed_bytes == sum(rec.stored_bytes for rec in read_mbits(mb).layers)  # what the file stores, no more


def test_built_on_meta_from_the_recipe(tmp_path):
    """A built-in model is built on the meta device: its quantized weights are never allocated."""
    from mixbits.models import create_model

    kwargs = {"in_channels": 1, "num_classes": 10, "input_size": 8}
    model = create_model("digits_cnn", **kwargs)
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4, 8, 16, 32)))
    space.fix_({l.name: [1, 2, 4, 8][i % 4] for i, l in enumerate(space.layers)})
    mb = tmp_path / "d.mbits"
    export_model(model.eval(), space, mb, zoo="digits_cnn", model_kwargs=kwargs)
    plain, packed = load(mb), load(mb, packed=True)
    assert not any(t.is_meta for t in packed.state_dict().values())
    assert _same(plain, packed, torch.randn(5, 1, 8, 8))


def test_bits_per_structure_shared_layers_and_cache(tmp_path):
    model = TinyResNet(width=4)
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 3, 4, 8, 16, 32), granularity="group:3"))
    cycle = (1, 3, 8, 16, 32, 2)
    space.fix_({l.name: tuple(cycle[(i + g) % 6] for g in range(l.num_groups)) if l.grouped else 4
                for i, l in enumerate(space.layers)})
    mb = tmp_path / "g.mbits"
    export_model(model.eval(), space, mb)
    x = torch.randn(3, 3, 8, 8)
    assert _same(load(mb, model=TinyResNet(width=4)), load(mb, model=TinyResNet(width=4), packed=True), x)
    cached = load(mb, model=TinyResNet(width=4), packed=True, cache=True)
    assert _same(load(mb, model=TinyResNet(width=4)), cached, x) and cached.stem.weight_packed._cached is not None

    model, space, _ = prepared(Oddities(), lambda i, l: [5, 16, 1, 8][i], exclude=("keep",))  # tied, shared, Conv1d
    mb = tmp_path / "o.mbits"
    export_model(model, space, mb)
    assert _same(load(mb, model=Oddities()), load(mb, model=Oddities(), packed=True), torch.randn(4, 3, 13))


def test_lstm_is_refused(tmp_path):
    from .test_export_onnx_packed import _Lstm

    model, space, _ = prepared(_Lstm(), lambda i, l: 4)
    export_model(model, space, tmp_path / "l.mbits")
    with pytest.raises(ValueError, match="packed=False"):
        load(tmp_path / "l.mbits", model=_Lstm(), packed=True)


def test_import_recipe_is_built_on_meta_too(tmp_path, monkeypatch):
    """A trusted import recipe is built on the meta device as well: no float copy of the weights is made."""
    import tests._export_nets as nets

    built = []
    real = nets.tiny_resnet

    def spy(**kw):
        m = real(**kw)
        built.append(next(m.parameters()).device.type)
        return m

    monkeypatch.setattr(nets, "tiny_resnet", spy)
    model, space, _ = prepared(TinyResNet(), lambda i, l: 2)
    mb = tmp_path / "r.mbits"
    export_model(model, space, mb, import_path="tests._export_nets:tiny_resnet")
    packed = load(mb, trust_code=True, packed=True)
    assert built == ["meta"]
    assert _same(load(mb, trust_code=True), packed, torch.randn(2, 3, 8, 8))

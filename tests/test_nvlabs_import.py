"""NVlabs stylegan2-ada-pytorch pickles: outputs equal NVlabs' own, and nothing in a pickle ever runs.

The fixture (tests/fixtures/nvlabs) was made by make_reference.py with NVlabs' code, outside the project.
"""

import io
import json
import os
import pickle
import pickletools
import re
import shutil
import subprocess
import sys
import time
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import lagm_cli

from lagm_ray.errors import CheckpointError
from lagm_ray.models.nvlabs_import import (
    MAX_GENERATOR_BYTES,
    generator_numel,
    import_generator,
    record_state_dict,
)
from lagm_ray.models.safe_pickle import (
    EasyDict,
    NetworkUnpickler,
    PersistentRecord,
    UnsafePickleError,
    load_network_pickle,
)
from lagm_ray.storage import sha256_file
from lagm_ray.synthetic import SyntheticSource, load_generator

FIXTURE = Path(__file__).parent / "fixtures" / "nvlabs"
PKL = FIXTURE / "network-snapshot-000000.pkl"
TOL = 1e-4  # measured: 1.9e-6 (NVlabs' fused modconv vs our un-fused one)


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE / "reference.pt", weights_only=True)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@torch.no_grad()
def assert_matches_nvlabs(G, ref) -> None:
    for psi in (1.0, 0.7):
        assert max_diff(G.mapping(ref["z"], None, truncation_psi=psi), ref[f"ws_psi{psi}"]) < TOL
        img = G(ref["z"], None, truncation_psi=psi, noise_mode="const")
        assert max_diff(img, ref[f"img_psi{psi}"]) < TOL, psi


def test_fixture_matches_nvlabs_images_ws_and_features(ref):
    G, init_kwargs, meta = import_generator(PKL)
    assert_matches_nvlabs(G, ref)
    assert init_kwargs["conv_clamp"] == 2.0 and init_kwargs["num_fp16_res"] == 2
    assert meta["resolution"] == 32 and meta["training_set_kwargs"]["resolution"] == 32
    with torch.no_grad():
        img, features = G(ref["z"], None, truncation_psi=0.7, noise_mode="const", return_features=True)
    # The features LAGM's annotator reads are exactly NVlabs' synthesis block outputs.
    assert len(features) == len(ref["features_psi0.7"]) == len(G.block_resolutions)
    for res, ch, ours, theirs in zip(G.block_resolutions, G.feature_channels(), features, ref["features_psi0.7"]):
        assert ours.shape == (3, ch, res, res)
        assert max_diff(ours, theirs) < TOL
    # conv_clamp=2 bites in the fixture, so clamping is exercised too.
    assert any((f.abs() >= 2.0 - 1e-6).any() for f in features)


def test_snapshot_is_read_as_inert_records():
    snap = load_network_pickle(PKL)
    assert set(snap) == {"training_set_kwargs", "G", "D", "G_ema", "augment_pipe"}
    for name, cls in (("G", "Generator"), ("D", "Discriminator"), ("G_ema", "Generator"),
                      ("augment_pipe", "AugmentPipe")):
        assert isinstance(snap[name], PersistentRecord) and snap[name].class_name == cls
    assert isinstance(snap["G_ema"].init_kwargs["synthesis_kwargs"], EasyDict)
    assert len(snap["G_ema"].module_src_sha256) == 64
    assert "dnnlib" not in sys.modules and "torch_utils" not in sys.modules


def test_synthetic_source_reads_the_pkl_directly(ref):
    source = SyntheticSource.from_spec(str(PKL))
    assert source.resolution == 32 and source.class_names is None and not source.has_true_masks
    batch = source.sample(3, z=ref["z"])
    assert max_diff(batch.images, ref["img_psi1.0"].clamp(-1, 1)) < TOL
    assert [f.shape[1] for f in batch.features] == source.feature_channels()


def test_cli_import_generator_writes_a_checkpoint_with_the_same_images(tmp_path, ref):
    out = tmp_path / "weights" / "G.pt"
    result = lagm_cli(["import-generator", PKL, "--out", out, "--category", "faces", "--class-names", "bg, eye,mouth"])
    assert result.returncode == 0, result.stderr
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))
    G, meta = load_generator(out)
    assert meta["category"] == "faces" and meta["class_names"] == ["bg", "eye", "mouth"]
    assert meta["source"] == "nvlabs" and meta["imported_sha256"] == sha256_file(PKL)
    assert_matches_nvlabs(G, ref)


def test_cli_truncated_pickle_is_a_clear_error(tmp_path):
    bad = tmp_path / "network-snapshot-000001.pkl"
    bad.write_bytes(PKL.read_bytes()[: PKL.stat().st_size // 2])
    result = lagm_cli(["import-generator", bad, "--out", tmp_path / "G.pt"])
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "truncated or corrupt" in result.stderr and "network-snapshot-000001.pkl" in result.stderr
    assert not (tmp_path / "G.pt").exists()


@pytest.mark.parametrize("cut", [0, 10, 5000, -100])
def test_truncated_or_empty_pickle_names_the_file(tmp_path, cut):
    bad = tmp_path / "cut.pkl"
    data = PKL.read_bytes()
    bad.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"cut\.pkl: not a readable NVlabs network pickle"):
        load_generator(bad)


# ----------------------------------------------------------------------------------- hostile pickles


def refused(path: Path, name: str) -> str:
    with pytest.raises(UnsafePickleError) as e:
        load_generator(path)
    assert str(path) in str(e.value) and f"refused global {name}" in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "exec"),
                                         ("builtins", "eval"), ("subprocess", "call")])
def test_reduce_to_code_is_refused_and_runs_nothing(tmp_path, module, name):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    arg = f"touch {marker}" if name in ("system", "call") else code
    path = tmp_path / "evil.pkl"
    # GLOBAL + REDUCE, written by hand: what `pickle.dumps` of any object with a hostile __reduce__ produces.
    path.write_bytes(b"\x80\x02" + f"c{module}\n{name}\n".encode() + b"(" + pickle.dumps(arg, protocol=2)[2:-1]
                     + b"tR.")
    ops = [op.name for op, _, _ in pickletools.genops(path.read_bytes())]
    assert ops[1:] == ["GLOBAL", "MARK", "BINUNICODE", "BINPUT", "TUPLE", "REDUCE", "STOP"]  # a well-formed call
    refused(path, f"{module}.{name}")
    assert not marker.exists()


def test_a_global_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "lagm_evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef boom(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"clagm_evil_mod\nboom\n(tR.")
    refused(path, "lagm_evil_mod.boom")
    assert not marker.exists() and "lagm_evil_mod" not in sys.modules


@pytest.fixture
def persistence(monkeypatch):
    """A stand-in ``torch_utils.persistence`` so the tests can write NVlabs-style records without NVlabs."""
    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called: only its name is pickled")

    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = mod.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    monkeypatch.setitem(sys.modules, "torch_utils", pkg)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", mod)
    return _reconstruct_persistent_obj


def dump_records(obj, path: Path, reconstruct, module_src: str = "", protocol: int = 4) -> None:
    """Pickle records as torch_utils.persistence does: a call of _reconstruct_persistent_obj(meta)."""
    class Pickler(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, PersistentRecord):
                return reconstruct, (dict(type="class", version=o.version, module_src=module_src,
                                          class_name=o.class_name, state=o.state),)
            if isinstance(o, EasyDict):  # as an OrderedDict: there is no dnnlib here to name
                return OrderedDict, (), None, None, iter(o.items())
            return NotImplemented

    with open(path, "wb") as f:
        Pickler(f, protocol=protocol).dump(obj)


def test_record_source_is_never_executed(tmp_path, persistence, ref):
    marker = tmp_path / "pwned"
    evil_src = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Generator: pass\n"
    snap = load_network_pickle(PKL)
    expected = import_generator(PKL)[0].state_dict()
    # Whole snapshot, only G_ema, and a bare network: all load from the records' state alone.
    for i, obj in enumerate([snap, {"G_ema": snap["G_ema"]}, snap["G_ema"]]):
        path = tmp_path / f"src{i}.pkl"
        dump_records(obj, path, persistence, module_src=evil_src)
        G, _, _ = import_generator(path)
        assert all(torch.equal(v, expected[k]) for k, v in G.state_dict().items())
    assert_matches_nvlabs(G, ref)
    assert not marker.exists()


def test_record_with_a_hostile_global_in_its_state_is_refused(tmp_path, persistence):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    g = load_network_pickle(PKL)["G_ema"]
    g.state["_hook"] = Payload()
    path = tmp_path / "evil.pkl"
    dump_records({"G_ema": g}, path, persistence, module_src=f"open({str(marker)!r}, 'w').close()")
    refused(path, "builtins.exec")
    assert not marker.exists()


def test_unsupported_option_is_a_clear_error(tmp_path, persistence):
    g = load_network_pickle(PKL)["G_ema"]
    g.state["_init_kwargs"]["synthesis_kwargs"]["architecture"] = "resnet"
    g.state["_init_kwargs"]["mapping_kwargs"]["activation"] = "relu"
    path = tmp_path / "resnet.pkl"
    dump_records({"G_ema": g}, path, persistence)
    with pytest.raises(CheckpointError) as e:
        load_generator(path)
    msg = str(e.value)
    assert str(path) in msg and "architecture='resnet'" in msg and "mapping_kwargs.activation='relu'" in msg


def test_missing_and_unexpected_tensors_are_listed(tmp_path, persistence):
    g = load_network_pickle(PKL)["G_ema"]
    b8 = g.state["_modules"]["synthesis"].state["_modules"]["b8"]
    conv1 = b8.state["_modules"]["conv1"]
    conv1.state["_parameters"]["extra"] = conv1.state["_parameters"].pop("noise_strength")
    path = tmp_path / "renamed.pkl"
    dump_records(g, path, persistence)
    with pytest.raises(CheckpointError, match=r"missing \['synthesis\.b8\.conv1\.noise_strength'\], "
                                              r"unexpected \['synthesis\.b8\.conv1\.extra'\]"):
        import_generator(path)


def test_not_a_generator_is_a_clear_error(tmp_path, persistence):
    snap = load_network_pickle(PKL)
    for obj, match in ((snap["D"], "is a Discriminator, not an NVlabs StyleGAN2 Generator"),
                       ({"G": snap["G"]}, r"no generator found: .*\['G'\]")):
        path = tmp_path / "x.pkl"
        dump_records(obj, path, persistence)
        with pytest.raises(CheckpointError, match=match):
            import_generator(path)
    shutil.copy(PKL, tmp_path / "copy.pkl")  # and the original still imports after all that
    import_generator(tmp_path / "copy.pkl")


# --------------------------------------------------------------------- names decided before any import


def run_isolated(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter (its modules and memory are its own) and return the JSON it prints."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


NO_IMPORT = """
import json, sys
from lagm_ray.errors import CheckpointError
from lagm_ray.synthetic import load_generator
import lagm_ray.models.nvlabs_import  # imported on first use; here, before anything is counted
result = []
for path in sys.argv[1:]:
    before = set(sys.modules)
    try:
        load_generator(path)
        message = None
    except CheckpointError as e:
        message = str(e)
    result.append({"message": message, "new_modules": sorted(set(sys.modules) - before),
                   "imported_before": sorted(m for m in before if m.startswith(("torch._dynamo", "torch.onnx",
                                                                                 "torch._inductor", "smtplib")))})
print(json.dumps(result))
"""


def test_find_class_imports_no_module(tmp_path):
    """torch's lazy submodules (``torch._dynamo`` pulls in ~800 modules) and a stdlib module nobody imported:
    refused by name, before and without any import or attribute lookup on a module."""
    globals_ = [("torch", "_dynamo"), ("torch", "onnx"), ("torch", "_inductor"), ("torch", "has_cuda"),
                ("torch._dynamo", "optimize"), ("smtplib", "SMTP"), ("__builtin__", "__import__")]
    paths = []
    for i, (module, name) in enumerate(globals_):
        paths.append(tmp_path / f"g{i}{('.pkl', '.pickle', '.pt', '')[i % 4]}")  # content decides, not suffix
        paths[-1].write_bytes(b"\x80\x02" + f"c{module}\n{name}\n".encode() + b")R.")
    results = run_isolated(NO_IMPORT, *map(str, paths))
    for (module, name), path, r in zip(globals_, paths, results):
        assert r["imported_before"] == []  # so that the check below means something
        assert r["new_modules"] == [], (module, name)
        shown = {"__builtin__": "builtins"}.get(module, module)
        assert r["message"].startswith(f"{path}: refused global {shown}.{name}: ")


@pytest.mark.parametrize("module,name,shown", [("__builtin__", "exec", "builtins.exec"),
                                               ("__builtin__", "eval", "builtins.eval"),
                                               ("copy_reg", "_reconstructor", "copyreg._reconstructor"),
                                               ("__builtin__", "getattr", "builtins.getattr")])
def test_python2_names_are_mapped_and_still_refused(tmp_path, module, name, shown):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x02" + f"c{module}\n{name}\n".encode() + b"(" +
                     pickle.dumps(f"open({str(marker)!r}, 'w').close()", protocol=2)[2:-1] + b"tR.")
    refused(path, shown)
    assert not marker.exists()


def test_protocol_2_snapshot_loads_like_the_original(tmp_path, persistence):
    snap = load_network_pickle(PKL)
    path = tmp_path / "proto2.pkl"
    dump_records(snap, path, persistence, protocol=2)
    globals_ = {arg for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"}
    # what makes protocol 2 different: Python 2 module names and bytes written as latin-1 text
    assert {"__builtin__ set", "_codecs encode"} <= globals_, globals_
    G, _, _ = import_generator(path)
    expected = import_generator(PKL)[0].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in G.state_dict().items())
    assert load_network_pickle(path)["G_ema"].state["_non_persistent_buffers_set"] == set()


@pytest.mark.parametrize("payload,reason", [
    (b"c__builtin__\nbytes\nJ\xff\xff\xff\x7f\x85R.", "refused builtins.bytes with arguments"),
    (b"c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00utf_7\x86R.", "refused _codecs.encode of a str"),
    (b"c_codecs\nencode\nK\x01X\x06\x00\x00\x00latin1\x86R.", "refused _codecs.encode of a int"),
])
def test_protocol_2_bytes_helpers_take_only_what_protocol_2_writes(tmp_path, payload, reason):
    path = tmp_path / "bytes.pkl"
    path.write_bytes(b"\x80\x02" + payload)
    with pytest.raises(CheckpointError) as e:
        load_network_pickle(path)
    assert str(e.value).startswith(f"{path}: {reason}")


# ----------------------------------------------------------------------------------- tensor views


class View:
    """Pickles as torch's ``_rebuild_tensor_v2(storage, offset, size, stride, ...)`` with any geometry."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (*self.args, False, OrderedDict())


def six_floats():
    return torch.arange(6, dtype=torch.float32)._typed_storage()  # what Tensor.__reduce_ex__ pickles


@pytest.mark.parametrize("offset,size,stride", [(0, (64,), (1,)), (5, (2,), (1,)), (0, (2, 3), (3, 2)),
                                                (7, (0,), (1,)), (0, (10**12,), (1,))])
def test_a_view_past_its_storage_is_refused(tmp_path, offset, size, stride):
    path = tmp_path / "view.pkl"
    path.write_bytes(pickle.dumps({"t": View(six_floats(), offset, size, stride)}, protocol=4))
    with pytest.raises(CheckpointError) as e:
        load_network_pickle(path)
    assert str(e.value).startswith(f"{path}: tensor view with size {size!r}, stride {stride!r}, offset {offset}")
    assert "of a storage of 6 elements (a view must lie inside its storage)" in str(e.value)


@pytest.mark.parametrize("offset,size,stride,reason", [
    (-1, (2,), (1,), "negative offset, size or stride"),
    (0, (-2,), (1,), "negative offset, size or stride"),
    (5, (3,), (-1,), "negative offset, size or stride"),
    (0, (2, 2), (1,), "sizes and strides must be as many"),
    (0, (2.0,), (1,), "offset, sizes and strides must be integers"),
    (True, (2,), (1,), "offset, sizes and strides must be integers"),
    (0, "ab", (1,), "offset, sizes and strides must be integers"),
])
def test_a_malformed_view_is_refused(tmp_path, offset, size, stride, reason):
    path = tmp_path / "view.pkl"
    path.write_bytes(pickle.dumps({"t": View(six_floats(), offset, size, stride)}, protocol=4))
    with pytest.raises(CheckpointError) as e:
        load_network_pickle(path)
    assert str(e.value).startswith(f"{path}: tensor view with ") and reason in str(e.value)


def test_views_inside_their_storage_load_as_torch_would():
    storage = six_floats()
    base = torch.arange(6, dtype=torch.float32)
    for offset, size, stride in [(0, (6,), (1,)), (1, (2, 2), (2, 1)), (0, (3, 2), (1, 3)), (5, (4,), (0,)),
                                 (6, (0,), (1,)), (2, (), ())]:
        data = pickle.dumps(View(storage, offset, size, stride), protocol=4)
        t = NetworkUnpickler(io.BytesIO(data), "mem").load()
        assert torch.equal(t, base.as_strided(size, stride, offset)), (offset, size, stride)
        assert t.untyped_storage().nbytes() == 24  # the storage was not grown


# ------------------------------------------------------------------- init arguments bounded before building

FIXTURE_KWARGS = dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                      mapping_kwargs={"num_layers": 2}, channel_base=256, channel_max=16, num_fp16_res=2,
                      conv_clamp=2.0)
FFHQ_1024 = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs={"num_layers": 8},
                 channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256)


def numel(G) -> int:
    return sum(t.numel() for t in G.parameters()) + sum(b.numel() for b in G.buffers())


@pytest.mark.parametrize("kwargs", [
    FIXTURE_KWARGS,
    dict(z_dim=8, c_dim=5, w_dim=16, img_resolution=16, img_channels=1, channel_base=128, channel_max=32,
         mapping_kwargs={"num_layers": 3, "embed_features": 7, "layer_features": 9, "w_avg_beta": None},
         kernel_size=1, use_noise=False, resample_filter=[1, 2, 1]),
    dict(z_dim=0, c_dim=4, w_dim=16, img_resolution=8, img_channels=4, mapping_kwargs={}, channel_base=64,
         channel_max=8, kernel_size=5),
])
def test_generator_numel_counts_what_generator_builds(kwargs):
    from lagm_ray.models.generator import Generator
    assert generator_numel(kwargs) == numel(Generator(**kwargs))


def test_published_generators_are_within_the_bound():
    from lagm_ray.models.generator import Generator
    with torch.device("meta"):  # shapes only: nothing allocated
        G = Generator(**FFHQ_1024)
    assert generator_numel(FFHQ_1024) == numel(G) == 33_167_164
    for kwargs in (FFHQ_1024, dict(FFHQ_1024, img_resolution=2048, channel_base=65536, channel_max=1024)):
        assert generator_numel(kwargs) * 4 <= MAX_GENERATOR_BYTES


def hostile_g_ema(tmp_path: Path, persistence, name: str = "hostile.pkl", **changes) -> Path:
    """The fixture's G_ema (its own small tensors) with init arguments changed."""
    g = load_network_pickle(PKL)["G_ema"]
    kw = g.state["_init_kwargs"]
    for key, value in changes.items():
        target, _, field = key.rpartition(".")
        (kw[target] if target else kw)[field] = value
    path = tmp_path / name
    dump_records({"G_ema": g}, path, persistence)
    return path


BOUNDED = """
import json, resource, sys, time
import torch
from lagm_ray.errors import CheckpointError
from lagm_ray.synthetic import load_generator
import lagm_ray.models.nvlabs_import
def resident():  # bytes resident now
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
# extra = peak during the load - resident before it: an upper bound on what the load added (ru_maxrss is the
# process's high-water mark, in KiB on Linux, and may have been set by the imports above)
before, start = resident(), time.perf_counter()
try:
    load_generator(sys.argv[1])
    message = None
except CheckpointError as e:
    message = str(e)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"message": message, "seconds": seconds, "extra_bytes": peak - before}))
"""


def test_img_resolution_65536_is_refused_fast_and_small(tmp_path, persistence):
    """The issue's snapshot: before, this allocated 16.9 GB until the OOM killer stopped it."""
    path = hostile_g_ema(tmp_path, persistence, img_resolution=65536)
    r = run_isolated(BOUNDED, str(path))
    assert r["message"].startswith(f"{path}: G_ema: init arguments out of range: img_resolution=65536 "
                                   "(a power of two in 4..4096)")
    assert r["seconds"] < 5 and r["extra_bytes"] < 2**30, r


def test_the_size_bound_alone_refuses_img_resolution_65536(tmp_path, persistence, monkeypatch):
    """Were the resolution range wider, the size estimate would still refuse it before building anything."""
    from lagm_ray.models import nvlabs_import
    monkeypatch.setattr(nvlabs_import, "_MAX_RESOLUTION", 1 << 16)
    path = hostile_g_ema(tmp_path, persistence, img_resolution=65536, **{"synthesis_kwargs.channel_base": 1 << 20})
    with pytest.raises(CheckpointError, match=r"hostile\.pkl: G_ema: its init arguments describe a generator of "
                                              r"11,\d{3},\d{3},\d{3} parameters and buffers \(4\d\.\d GiB"):
        import_generator(path)


def test_a_generator_over_the_size_bound_is_refused_with_its_size(tmp_path, persistence):
    # every argument in range; together they describe 2.6 billion values
    path = hostile_g_ema(tmp_path, persistence, img_resolution=1024,
                         **{"synthesis_kwargs.channel_base": 1 << 24, "synthesis_kwargs.channel_max": 8192})
    r = run_isolated(BOUNDED, str(path))
    assert r["message"].startswith(f"{path}: G_ema: its init arguments describe a generator of ")
    assert re.search(r"of [\d,]+ parameters and buffers \([\d.,]+ GiB as float32\), more than the 1 GiB",
                     r["message"]), r["message"]
    assert r["seconds"] < 5 and r["extra_bytes"] < 2**30, r


@pytest.mark.parametrize("changes,shown", [
    ({"img_resolution": 48}, "img_resolution=48 (a power of two in 4..4096)"),
    ({"img_resolution": 2}, "img_resolution=2 (a power of two in 4..4096)"),
    ({"img_resolution": 32.0}, "img_resolution=32.0 (a power of two"),
    ({"z_dim": -1}, "z_dim=-1 (an integer in 0..16384)"),
    ({"z_dim": True}, "z_dim=True (an integer in 0..16384)"),
    ({"w_dim": 10**9}, "w_dim=1000000000 (an integer in 1..16384)"),
    ({"z_dim": 0}, "z_dim=0 and c_dim=0"),
    ({"img_channels": 5}, "img_channels=5 (an integer in 1..4)"),
    ({"mapping_kwargs.num_layers": 10**6}, "mapping_kwargs.num_layers=1000000 (an integer in 1..64)"),
    ({"mapping_kwargs.num_layers": 0}, "mapping_kwargs.num_layers=0 (an integer in 1..64)"),
    ({"mapping_kwargs.lr_multiplier": float("nan")}, "mapping_kwargs.lr_multiplier=nan (a number in (0, 1000]"),
    ({"mapping_kwargs.w_avg_beta": 2}, "mapping_kwargs.w_avg_beta=2 (a number in [0, 1] or None)"),
    ({"mapping_kwargs.layer_features": "512"}, "mapping_kwargs.layer_features='512' (an integer in 1..16384 or None)"),
    ({"synthesis_kwargs.channel_base": 16}, "synthesis_kwargs.channel_base=16 (at least img_resolution=32"),
    ({"synthesis_kwargs.channel_max": 0}, "synthesis_kwargs.channel_max=0 (an integer in 1..16384)"),
    ({"synthesis_kwargs.num_fp16_res": -1}, "synthesis_kwargs.num_fp16_res=-1"),
    ({"synthesis_kwargs.conv_clamp": -1.0}, "synthesis_kwargs.conv_clamp=-1.0 (a number in [0, 1e+06] or None)"),
    ({"synthesis_kwargs.kernel_size": 4}, "synthesis_kwargs.kernel_size=4 (odd"),
    ({"synthesis_kwargs.use_noise": "yes"}, "synthesis_kwargs.use_noise='yes' (True or False)"),
    ({"synthesis_kwargs.resample_filter": [1, -1]}, "synthesis_kwargs.resample_filter=[1, -1] (1 to 16 numbers"),
    ({"synthesis_kwargs.resample_filter": [1] * 1000}, "synthesis_kwargs.resample_filter=[1, 1, 1,"),
    ({"synthesis_kwargs.fp16_channels_last": 3}, "synthesis_kwargs.fp16_channels_last=3 (True or False)"),
])
def test_each_init_argument_is_bounded(tmp_path, persistence, changes, shown):
    path = hostile_g_ema(tmp_path, persistence, **changes)
    with pytest.raises(CheckpointError) as e:
        import_generator(path)
    assert str(e.value).startswith(f"{path}: G_ema: init arguments out of range: ")
    assert shown in str(e.value) and len(str(e.value)) < 400


def test_init_arguments_holding_themselves_are_refused(tmp_path, persistence):
    g = load_network_pickle(PKL)["G_ema"]
    loop = g.state["_init_kwargs"]["mapping_kwargs"]
    loop["embed_features"] = loop  # a container that holds itself (a pickle can build one with its memo)
    path = tmp_path / "loop.pkl"
    dump_records({"G_ema": g}, path, persistence)
    with pytest.raises(CheckpointError, match=r"loop\.pkl: arguments nested more than 16 deep"):
        import_generator(path)



# ------------------------------------------------------------------- files told apart by content


def chain_text(e: BaseException) -> str:
    """Every message in an exception's chain, as a traceback would show them."""
    texts = []
    while e is not None:
        texts.append(str(e))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return "\n".join(texts)


def not_a_pickle_files(tmp_path: Path) -> dict[str, Path]:
    import bz2
    import gzip
    import tarfile
    import zipfile

    import numpy as np

    files = {}

    def put(what: str, name: str, data: bytes) -> None:
        files[what] = tmp_path / name
        files[what].write_bytes(data)

    put("a PNG image", "G.pkl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    put("a JPEG image", "G2.pkl", b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(64))
    put("a gzip-compressed file", "snapshot.pkl", gzip.compress(PKL.read_bytes()[:4096]))  # gzipped pickle
    put("a bzip2-compressed file", "snapshot2.pkl", bz2.compress(PKL.read_bytes()[:4096]))
    np.save(tmp_path / "arr.npy", np.zeros(3))
    put("a numpy .npy array", "arr.pkl", (tmp_path / "arr.npy").read_bytes())
    np.savez(tmp_path / "arr.npz", a=np.zeros(3))
    put("a zip archive without a torch checkpoint's data.pkl (a dataset, an .npz, ...)", "npz.pkl",
        (tmp_path / "arr.npz").read_bytes())
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(PKL, arcname="network-snapshot-000000.pkl")
    put("a tar archive", "tar.pkl", (tmp_path / "x.tar").read_bytes())
    with zipfile.ZipFile(tmp_path / "ts.pt", "w") as z:  # the entries that make torch.load call torch.jit.load
        for name in ("ts/data.pkl", "ts/constants.pkl", "ts/code/__torch__.py", "ts/version"):
            z.writestr(name, b"")
    put("a TorchScript archive (torch.jit.save: code, not only weights)", "ts.pkl", (tmp_path / "ts.pt").read_bytes())
    return files


def test_a_file_that_is_not_a_pickle_is_named(tmp_path):
    for what, path in not_a_pickle_files(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            load_generator(path)
        assert str(e.value).startswith(f"{path}: this is {what}, not a generator checkpoint"), str(e.value)
        with pytest.raises(CheckpointError) as e:
            import_generator(path)
        assert str(e.value) == f"{path}: this is {what}, not an NVlabs network pickle"


def test_cli_names_a_png_renamed_pkl(tmp_path):
    png = not_a_pickle_files(tmp_path)["a PNG image"]
    result = lagm_cli(["import-generator", png, "--out", tmp_path / "out.pt"])
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "this is a PNG image, not an NVlabs network pickle" in result.stderr
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("name", ["G.pickle", "G.pt", "G", "network-snapshot.PKL"])
def test_an_nvlabs_pickle_is_recognised_whatever_its_suffix(tmp_path, ref, name):
    path = tmp_path / name
    shutil.copy(PKL, path)
    G, meta = load_generator(path)
    assert meta["source"] == "nvlabs" and meta["imported_from"] == str(path)
    assert_matches_nvlabs(G, ref)


@pytest.mark.parametrize("name,legacy", [("G.pkl", False), ("G.pickle", False), ("G.pkl", True), ("G.bin", True)])
def test_a_torch_checkpoint_is_read_weights_only_whatever_its_suffix(tmp_path, ref, name, legacy):
    from lagm_ray.synthetic import import_nvlabs_checkpoint

    path = tmp_path / name
    torch.save(import_nvlabs_checkpoint(PKL), path, _use_new_zipfile_serialization=not legacy)
    G, meta = load_generator(path)
    assert meta["source"] == "nvlabs"  # the meta of the checkpoint, not of an import of it
    assert_matches_nvlabs(G, ref)
    with pytest.raises(CheckpointError, match="this is a torch checkpoint .* not an NVlabs network pickle"):
        import_generator(path)


class Payload:
    """Pickles as a call of a global that no weights-only loader allows."""

    def __reduce__(self):
        return shutil.rmtree, ("/nonexistent-lagm-test",)


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_checkpoint_with_a_global_is_refused_without_torch_advice(tmp_path, legacy):
    path = tmp_path / "G.pkl"  # a torch checkpoint named like a pickle
    torch.save({"format": "lagm_ray.generator/v1", "x": Payload()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafePickleError) as e:
        load_generator(path)
    assert str(e.value).startswith(f"{path}: refused global shutil.rmtree: ")
    assert "weights_only" not in chain_text(e.value) and "safe_globals" not in chain_text(e.value)


def test_unreadable_torch_checkpoint_is_rephrased(tmp_path):
    import zipfile

    good = tmp_path / "good.pt"
    torch.save({"x": torch.zeros(100)}, good)
    paths = {"cut": tmp_path / "cut.pkl", "opcode": tmp_path / "opcode.pt", "legacy_cut": tmp_path / "legacy.pt"}
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(paths["opcode"], "w") as out:
        for n in src.namelist():  # data.pkl with an opcode the weights-only unpickler refuses
            out.writestr(n, b"\x80\x02c__builtin__\nexec\n." if n.endswith("data.pkl") else src.read(n))
    torch.save({"x": torch.zeros(100)}, tmp_path / "l.pt", _use_new_zipfile_serialization=False)
    paths["legacy_cut"].write_bytes((tmp_path / "l.pt").read_bytes()[:300])
    paths["cut"].write_bytes(good.read_bytes()[:-200])
    for path in paths.values():
        with pytest.raises(CheckpointError) as e:
            load_generator(path)
        text = chain_text(e.value)
        assert str(e.value).startswith(f"{path}: "), text
        assert "weights_only" not in text and "safe_globals" not in text, text


def test_storage_bytes_with_a_global_are_refused_without_torch_advice(tmp_path):
    import io as _io

    buf = _io.BytesIO()
    torch.save(Payload(), buf)

    class EvilStorage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (buf.getvalue(),)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": EvilStorage()}, protocol=4))
    with pytest.raises(UnsafePickleError) as e:
        load_network_pickle(path)
    assert str(e.value).startswith(f"{path}: tensor storage: refused global shutil.rmtree: ")
    assert "weights_only" not in chain_text(e.value)


# ------------------------------------------------------------------------- module records form a tree


def test_a_module_record_under_itself_is_refused(tmp_path):
    """Built with the pickle memo: the record's own _modules dict, filled after the record exists."""
    def text(x: str) -> bytes:
        return b"\x8c" + bytes([len(x)]) + x.encode()

    path = tmp_path / "loop.pkl"
    path.write_bytes(b"\x80\x04ctorch_utils.persistence\n_reconstruct_persistent_obj\n}(" + text("type")
                     + text("class") + text("class_name") + text("Generator") + text("state") + b"}("
                     + text("_modules") + b"}\x94uu\x85R\x94h\x00" + text("loop") + b"h\x01s0.")
    record = load_network_pickle(path)
    assert record.state["_modules"]["loop"] is record
    with pytest.raises(CheckpointError, match=r"^module loop is reached twice \(a module under two parents, or a "):
        record_state_dict(record)


@pytest.mark.parametrize("levels,reason", [(20, r"extra(\.a)*\.b is reached twice \(a module under two parents"),
                                           (40, r"extra(\.a){32} is nested more than 32 deep")])
def test_a_module_record_under_two_parents_is_refused_at_once(tmp_path, persistence, levels, reason):
    """Levels of two references to the next: a walk that followed them would visit 2**levels records."""
    g = load_network_pickle(PKL)["G_ema"]
    child = PersistentRecord("Leaf", {"_modules": {}}, 6, "")
    for _ in range(levels):
        child = PersistentRecord("Pair", {"_modules": {"a": child, "b": child}}, 6, "")
    g.state["_modules"]["extra"] = child
    path = tmp_path / "dag.pkl"
    dump_records(g, path, persistence)
    assert path.stat().st_size < PKL.stat().st_size * 2  # the pickle memo keeps it small
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"dag\.pkl: module {reason}"):
        import_generator(path)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("where", ["init_kwargs", "training_set_kwargs"])
def test_arguments_sharing_containers_are_refused_at_once(tmp_path, persistence, where):
    """Six levels of a list holding the next 1000 times: a few kB in the file, 10**18 values to copy."""
    wide = [0]
    for _ in range(6):
        wide = [wide] * 1000
    snap = load_network_pickle(PKL)
    if where == "init_kwargs":
        snap["G_ema"].state["_init_kwargs"]["mapping_kwargs"]["layer_features"] = wide
    else:
        snap["training_set_kwargs"]["path"] = wide
    path = tmp_path / "wide.pkl"
    dump_records(snap, path, persistence)
    assert path.stat().st_size < PKL.stat().st_size + 50_000
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"wide\.pkl: .*holding more than 10000 values"):
        import_generator(path)
    assert time.perf_counter() - start < 5

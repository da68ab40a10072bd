"""A sweep directory is restored only when asked: a planted tuner.pkl is never unpickled without --resume."""

from __future__ import annotations

import pytest
from conftest import tiny_sweep

from lagm_ray import sweep_command

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_an_existing_sweep_is_restored_only_with_resume(tmp_path, tiny_generator_path, capsys):
    """No Ray needed: the refusal comes first. A planted tuner.pkl would write a file when unpickled."""
    path = tiny_sweep(tmp_path, tiny_generator_path, name="planted")
    exp = tmp_path / "ray" / "planted"
    exp.mkdir(parents=True)
    owned = tmp_path / "owned"
    payload = f"import pathlib; pathlib.Path({str(owned)!r}).write_text('ran')"
    (exp / "tuner.pkl").write_bytes(b"cbuiltins\nexec\n(S" + repr(payload).encode() + b"\ntR.")
    rc = sweep_command.main(path, "sweep", ["--storage-path", str(tmp_path / "ray")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert str(exp) in err[0] and "--resume" in err[0] and "--name" in err[0]
    assert not owned.exists()

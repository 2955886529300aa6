"""Each concern has one home; its old names are the same objects, not copies."""

from __future__ import annotations

import os

import pytest

import vlae
from vlae import checkpoint, config, encoder, observation, outputs, pixelcnn, presets
from vlae.errors import VLAEError


def test_old_names_are_the_new_homes():
    assert config.PRESETS is presets.PRESETS and config.get_preset is presets.get_preset
    assert vlae.PRESETS is presets.PRESETS and vlae.get_preset is presets.get_preset
    assert checkpoint.atomic_write is outputs.atomic_write and checkpoint.write_error is outputs.write_error
    assert pixelcnn.field_depths is config.field_depths and pixelcnn.parse_field is config.parse_field
    assert observation.OBSERVATIONS is config.OBSERVATIONS and encoder.ENCODER_KINDS is config.ENCODER_KINDS
    with pytest.raises(AttributeError):
        config.NO_SUCH_NAME  # noqa: B018


def test_data_dimensions_are_computed_once():
    from vlae.model import VLAE

    cfg = presets.get_preset("tiny").model
    assert config.data_dims((3, 8, 12)) == 288
    assert cfg.data_dims == observation.observation_model(cfg).dims(cfg.image_shape) == VLAE(cfg).dims == 784


def test_atomic_write_leaves_the_old_file_and_respects_the_umask(tmp_path):
    path = outputs.atomic_write(tmp_path / "sub" / "f.bin", lambda f: f.write(b"one"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o666 & ~umask

    def broken(f):
        f.write(b"half")
        raise RuntimeError("unexpected pos 9 vs 1")  # torch.save's wrapper of a failed write

    with pytest.raises(VLAEError, match=r"f.bin: cannot write \(write failed: unexpected pos 9 vs 1; is the disk"):
        outputs.atomic_write(path, broken)
    assert path.read_bytes() == b"one" and os.listdir(path.parent) == ["f.bin"]

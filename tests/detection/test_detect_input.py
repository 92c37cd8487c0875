"""`detect` refuses what is not an image before it loads any model."""

from __future__ import annotations

import pytest
from PIL import Image

from modelyard.detection.infer import check_image, detect
from modelyard.errors import ModelyardError


def test_only_readable_images_are_accepted(tmp_path):
    good = tmp_path / "ok.jpg"
    Image.new("RGB", (8, 8), "red").save(good)
    check_image(str(good))
    (tmp_path / "fake.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "names.txt").write_text("RBC\nWBC\n")
    with pytest.raises(ModelyardError, match="fake.jpg is not a readable image"):
        check_image(str(tmp_path / "fake.jpg"))
    with pytest.raises(ModelyardError, match="names.txt is not a readable image"):
        check_image(str(tmp_path / "names.txt"))
    with pytest.raises(ModelyardError, match="is a folder"):
        check_image(str(tmp_path))
    with pytest.raises(ModelyardError, match="not found"):
        check_image(str(tmp_path / "missing.jpg"))
    with pytest.raises(ModelyardError, match=r"--save .*out.txt.*\.jpg"):
        detect(str(good), save=str(tmp_path / "out.txt"), tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")

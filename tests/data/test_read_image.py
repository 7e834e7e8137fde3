"""read_image on a truncated JPEG: decoded, with one warning naming the file; complete files say nothing."""
import logging

import cv2
import numpy as np

from detres.data.detection.mapper import read_image


def _jpeg_bytes():
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (160, 120))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def test_truncated_jpeg_warns_once_naming_the_file(tmp_path, caplog):
    data = _jpeg_bytes()
    assert data.endswith(b"\xff\xd9")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    complete = tmp_path / "complete.jpg"
    complete.write_bytes(data + b"\x00\x00")  # padding after the end marker is harmless
    png = tmp_path / "image.png"
    cv2.imwrite(str(png), np.zeros((8, 8, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="detres"):
        for path in (complete, png):
            assert read_image(str(path)).shape[:2] in ((120, 160), (8, 8))
        assert not caplog.records
        for _ in range(2):
            assert read_image(str(cut), "RGB").shape == (120, 160, 3)  # what is there, decoded
    assert [r.getMessage() for r in caplog.records] == [
        f"{cut}: truncated JPEG (Premature end of JPEG file); decoded what is there"]

"""tools/eval_demo_sr.py: the queries it writes and the PSNR it reports (scoring is demo.scoring's)."""

import numpy as np
import pytest

from tools import eval_demo_sr


def test_queries_take_every_nth_image_with_alternating_languages(tmp_path):
    lines = []
    for index in range(5):
        lines += [
            f"{index:05d}.png\t蓝色背景上的一只红色的猫",
            f"{index:05d}.png\ta red cat on a blue background",
        ]
    captions = tmp_path / "captions.tsv"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output = tmp_path / "queries.tsv"
    assert eval_demo_sr.write_queries(captions, 2, output) == 3
    rows = [line.split("\t") for line in output.read_text(encoding="utf-8").splitlines()]
    assert [row[0] for row in rows] == ["00000", "00002", "00004"]
    assert [row[1] for row in rows] == [
        "蓝色背景上的一只红色的猫",
        "a red cat on a blue background",
        "蓝色背景上的一只红色的猫",
    ]
    assert [row[2] for row in rows] == [str((tmp_path / f"{i:05d}.png").resolve()) for i in (0, 2, 4)]


def test_psnr_of_a_known_error():
    reference = np.zeros((4, 4, 3), dtype=np.uint8)
    image = np.full((4, 4, 3), 16, dtype=np.uint8)  # mean squared error 256
    assert eval_demo_sr.psnr([image], [reference]) == pytest.approx(10 * np.log10(255**2 / 256))
    assert eval_demo_sr.psnr([reference], [reference]) == pytest.approx(10 * np.log10(255**2 / 1e-10))


def test_every_below_one_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        eval_demo_sr.main(["queries", "--captions", str(tmp_path / "c.tsv"), "--every", "0", "--output", "q"])

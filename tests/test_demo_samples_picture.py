"""tools/demo_samples_picture.py: the first sample of each prompt, tiled in the prompts file's order."""

from PIL import Image

from tools import demo_samples_picture


def write_run(tmp_path, colours):
    prompts = tmp_path / "prompts.tsv"
    prompts.write_text("".join(f"{i:03d}\ta red cat on a blue background\n" for i in range(len(colours))))
    samples = tmp_path / "samples"
    for index, colour in enumerate(colours):
        folder = samples / f"{index:03d}"
        folder.mkdir(parents=True)
        Image.new("RGB", (4, 4), colour).save(folder / "0.png")
        Image.new("RGB", (4, 4), (0, 0, 0)).save(folder / "1.png")  # not the first sample: left out
        Image.new("RGB", (8, 8), (0, 0, 0)).save(folder / "concat.png")  # the grid: left out
    return prompts, samples


def test_tiles_follow_the_prompts_in_rows(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    prompts, samples = write_run(tmp_path, colours)
    output = tmp_path / "picture.png"
    argv = ["--prompts", str(prompts), "--samples", str(samples), "--output", str(output)]
    assert demo_samples_picture.main([*argv, "--columns", "2", "--scale", "3"]) == 0
    with Image.open(output) as image:
        gap, tile = demo_samples_picture.GAP, 4 * 3
        assert image.size == (2 * (tile + gap) + gap, 2 * (tile + gap) + gap)
        centre = gap + tile // 2
        assert image.getpixel((centre, centre)) == colours[0]
        assert image.getpixel((centre + tile + gap, centre)) == colours[1]
        assert image.getpixel((centre, centre + tile + gap)) == colours[2]
        assert image.getpixel((centre + tile + gap, centre + tile + gap)) == demo_samples_picture.BACKGROUND


def test_a_missing_sample_folder_is_one_line(tmp_path, capsys):
    prompts, samples = write_run(tmp_path, [(255, 0, 0)])
    (samples / "000" / "0.png").unlink()
    (samples / "000" / "1.png").unlink()
    output = tmp_path / "picture.png"
    argv = ["--prompts", str(prompts), "--samples", str(samples), "--output", str(output)]
    assert demo_samples_picture.main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not output.exists()

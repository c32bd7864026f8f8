"""The foundation subcommands, run as a user would (in-process through cli.main)."""

import json

from nemo_eagle.cli import main


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "chat" in capsys.readouterr().out
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_tiles_prints_plan(capsys, fixtures_dir):
    assert main(["tiles", str(fixtures_dir / "images" / "portrait_300x900.png"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["grid"] == [1, 3] and plan["num_tiles"] == 4 and plan["num_tokens"] == 1024
    assert main(["tiles", "example", "--max-image-tokens", "600"]) == 0
    assert "lowered" in capsys.readouterr().out


def test_tiles_bad_image(capsys, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    assert main(["tiles", str(bad)]) == 2
    assert "not an image" in capsys.readouterr().err


def test_chat_on_fixture_with_two_images(capsys, tiny_ckpt, fixtures_dir, tmp_path):
    rc = main(["chat", "--model", str(tiny_ckpt), "--image", "example", "--image",
               str(fixtures_dir / "images" / "rgba_200x150.png"), "--max-new-tokens", "4", "--max-tiles", "2",
               "--draw-boxes", str(tmp_path / "boxes.png"), "Where is it?"])
    assert rc == 0
    assert (tmp_path / "boxes.png").exists()


def test_chat_missing_model_is_clear(capsys, tmp_path):
    assert main(["chat", "--model", str(tmp_path / "nowhere"), "hi"]) == 2
    assert "not found" in capsys.readouterr().err


def test_chat_corrupt_image_is_clear(capsys, tiny_ckpt, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["chat", "--model", str(tiny_ckpt), "--image", str(bad), "hi"]) == 2
    err = capsys.readouterr().err
    assert "x.png" in err and "corrupt or truncated" in err


def test_create_tiny_writes_loadable_random_checkpoint(capsys, tmp_path):
    assert main(["create-tiny", str(tmp_path / "t"), "--image-size", "28"]) == 0
    assert "RANDOM" in capsys.readouterr().out
    from nemo_eagle import EagleModel

    model = EagleModel.from_pretrained(tmp_path / "t")
    assert model.config.vision.image_size == 28 and model.tokenizer is not None
    assert "RANDOM" in (tmp_path / "t" / "README.md").read_text()
